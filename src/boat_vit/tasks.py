"""Synthetic classification tasks built from scikit-learn's handwritten digits, for the FSLA ablation.

Two tasks share one generator. Every image is a ``canvas x canvas`` grey image, black background, with
handwritten digits pasted at integer positions:

``digit-pairs`` (distance matters)
    Two digits, label ``same`` (1) when both show the same class, ``different`` (0) otherwise. The two are
    always *different* source images (same class means two hands, never a copy). Item ``i`` has label
    ``i % 2``, so labels are balanced exactly for an even size. A ``same`` pair draws its class uniformly;
    a ``different`` pair draws two distinct classes uniformly, so each single digit's class is uniform
    under both labels: one digit alone says nothing about the label. The two digits are placed uniformly
    at random subject to one rule: their bounding boxes together span at least ``min_span`` pixels along x
    or along y (so they never overlap). With the ablation's model (patch 2, window 6 at 48x48: stage-1
    windows of 12 pixels, stage-2 windows of 24), ``min_span=25`` means no window of the first two stages,
    shifted or not, holds both digits: only a long-range interaction can compare them before the last
    stage. A linear head over average-pooled tokens cannot compute "same" from tokens that never saw
    both digits (it would need ``g(a) + g(b) > t`` for every ``a = b`` and ``< t`` for every ``a != b``,
    which contradicts itself), so the comparison must happen inside the network.

``digit-clutter`` (control: local evidence suffices)
    One digit, label its class; item ``i`` shows class ``i % 10``, so class counts differ by at most one.

Both tasks add the same clutter: ``num_clutter`` fragments, each a random ``clutter_size`` square crop
with ink of a random source digit, pasted at random positions that do not touch a labelled digit
(fragments may overlap each other). Overlapping ink combines by maximum.

Sources and splits: the 1,797 digits (8x8, 17 grey levels, scaled to 0-255, each pixel repeated
``digit_scale`` times along both axes) are split per class into a training pool and a held-out pool
(``heldout_fraction`` of each class, drawn with the seed). Training images use only training-pool
digits, held-out images only held-out-pool digits, labelled digits and clutter alike: no source image
appears in both splits.

Determinism: the pools depend only on ``seed``; image ``i`` of a split is drawn from a NumPy generator
seeded with ``(seed, split, i)``, so it does not depend on the other images, the split size or the order
of access. Same configuration, same images, on every machine.

A task is named by a spec string, ``NAME`` or ``NAME:key=value,...`` with :class:`TaskConfig` fields,
e.g. ``digit-pairs:canvas=64,min_span=33,train_size=2000``; ``boat-vit train --data digit-pairs`` trains
any timm model on it (use ``--img-size`` equal to the canvas, no flips or crops: ``--hflip 0 --scale 1 1``).
"""
import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

__all__ = [
    "TASK_NAMES",
    "PAIRS_TASK",
    "CLUTTER_TASK",
    "TaskConfig",
    "DigitTaskDataset",
    "parse_task",
    "is_task_spec",
    "build_task_datasets",
    "load_source_digits",
]

PAIRS_TASK = "digit-pairs"
CLUTTER_TASK = "digit-clutter"
TASK_NAMES = (PAIRS_TASK, CLUTTER_TASK)
SPLITS = ("train", "val")
NUM_DIGIT_CLASSES = 10
PAIR_CLASSES = ("different", "same")
DIGIT_SIDE = 8  # scikit-learn's digits are 8x8
DIGIT_MAX_LEVEL = 16  # ... of 17 grey levels (0..16)
UINT8_MAX = 255
MIN_FRAGMENT_INK = 2 * UINT8_MAX  # a clutter fragment holds at least this much ink (about two full pixels)
MAX_PLACEMENT_TRIES = 1000  # rejection sampling of positions; a config that exhausts it is refused
_POOL_STREAM = 0  # generator stream of the source split; images use streams 1 (train) and 2 (held out)


@dataclass(frozen=True)
class TaskConfig:
    """One task and its generation parameters (module docstring).

    Attributes:
        name: ``digit-pairs`` or ``digit-clutter``.
        canvas: Image side in pixels.
        digit_scale: Each source pixel becomes a ``digit_scale`` square (digits are ``8 * digit_scale`` wide).
        num_clutter: Clutter fragments per image.
        clutter_size: Side of a clutter fragment in source pixels (scaled like the digits).
        min_span: ``digit-pairs``: the two digits' boxes together span at least this many pixels along x
            or y.
        train_size: Images in the training split.
        heldout_size: Images in the held-out split.
        heldout_fraction: Share of each class's source digits reserved for the held-out split.
        seed: Seed of the source split and of every image.
    """

    name: str = PAIRS_TASK
    canvas: int = 48
    digit_scale: int = 1
    num_clutter: int = 4
    clutter_size: int = 4
    min_span: int = 25
    train_size: int = 4000
    heldout_size: int = 1000
    heldout_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if self.name not in TASK_NAMES:
            raise ValueError(f"unknown task {self.name!r}; choose from {TASK_NAMES}")
        side = self.digit_side
        if self.canvas < side:
            raise ValueError(f"canvas {self.canvas} is smaller than a digit ({side} pixels)")
        if not 0 < self.clutter_size <= DIGIT_SIDE or self.num_clutter < 0:
            raise ValueError(f"need 0 < clutter_size <= {DIGIT_SIDE} and num_clutter >= 0")
        if self.name == PAIRS_TASK and not 2 * side <= self.min_span <= self.canvas:
            raise ValueError(f"min_span must be in [{2 * side}, canvas={self.canvas}] for two {side}-pixel digits")
        if self.train_size < 1 or self.heldout_size < 1 or not 0 < self.heldout_fraction < 1:
            raise ValueError("need train_size >= 1, heldout_size >= 1 and 0 < heldout_fraction < 1")

    @property
    def digit_side(self) -> int:
        return DIGIT_SIDE * self.digit_scale

    @property
    def classes(self) -> list[str]:
        return list(PAIR_CLASSES) if self.name == PAIRS_TASK else [str(c) for c in range(NUM_DIGIT_CLASSES)]

    def spec(self) -> str:
        """The spec string that :func:`parse_task` turns back into this config (defaults left out)."""
        changed = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                   if f.name != "name" and getattr(self, f.name) != f.default]
        return self.name + (":" + ",".join(changed) if changed else "")


def is_task_spec(spec: str) -> bool:
    """Whether ``spec`` names a task (``NAME`` or ``NAME:key=value,...``)."""
    return spec.split(":", 1)[0] in TASK_NAMES


def parse_task(spec: str) -> TaskConfig:
    """``NAME`` or ``NAME:key=value,...`` (keys: :class:`TaskConfig` fields) -> :class:`TaskConfig`."""
    name, _, options = spec.partition(":")
    fields = {f.name: f for f in dataclasses.fields(TaskConfig) if f.name != "name"}
    values: dict = {}
    for item in filter(None, options.split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise ValueError(f"bad task option {item!r} in {spec!r}; expected key=value with keys {sorted(fields)}")
        kind = type(fields[key].default)
        try:
            values[key] = kind(value)
        except ValueError:
            raise ValueError(f"task option {key} needs a {kind.__name__}, got {value!r}") from None
    return TaskConfig(name=name, **values)


def load_source_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``(1797, 8, 8)`` uint8 images (0-255) and their ``(1797,)`` labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (UINT8_MAX / DIGIT_MAX_LEVEL)).astype(np.uint8)
    return images, digits.target.astype(np.int64)


def _source_pools(labels: np.ndarray, config: TaskConfig) -> dict[str, list[np.ndarray]]:
    """Per split, per class: the source digit indices the split may use (disjoint between splits)."""
    rng = np.random.default_rng((config.seed, _POOL_STREAM))
    pools: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for label in range(NUM_DIGIT_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == label))
        num_heldout = max(1, round(config.heldout_fraction * len(members)))
        pools["val"].append(np.sort(members[:num_heldout]))
        pools["train"].append(np.sort(members[num_heldout:]))
    return pools


class DigitTaskDataset(Dataset):
    """One split of a task (module docstring), generated in full at construction (about 2 KB per image).

    Items are ``(transform(image), label)`` with a PIL RGB image, like
    :class:`boat_vit.data.DigitsDataset`.

    Attributes:
        config: The task.
        split: ``'train'`` or ``'val'`` (held out).
        classes: Class names.
        targets: Label of every image.
        images: ``(n, canvas, canvas)`` uint8 images.
        digit_boxes: ``(n, k, 4)`` boxes ``(top, left, bottom, right)`` of the labelled digits (``k`` = 2
            for pairs, 1 for clutter).
        digit_labels: ``(n, k)`` classes of the labelled digits.
        sources: Per image, the source digit indices used (labelled digits first, then clutter).
    """

    def __init__(self, split: str, config: TaskConfig = TaskConfig(), transform: Optional[Callable] = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.config, self.split, self.transform = config, split, transform
        self.classes = config.classes
        digits, labels = load_source_digits()
        if config.digit_scale > 1:
            digits = digits.repeat(config.digit_scale, axis=1).repeat(config.digit_scale, axis=2)
        pools = _source_pools(labels, config)[split]
        size = config.train_size if split == "train" else config.heldout_size
        num_digits = 2 if config.name == PAIRS_TASK else 1
        self.images = np.zeros((size, config.canvas, config.canvas), dtype=np.uint8)
        self.digit_boxes = np.zeros((size, num_digits, 4), dtype=np.int64)
        self.digit_labels = np.zeros((size, num_digits), dtype=np.int64)
        self.sources: list[tuple[int, ...]] = []
        self.targets: list[int] = []
        for index in range(size):
            rng = np.random.default_rng((config.seed, 1 + SPLITS.index(split), index))
            target, classes = self._draw_classes(index, rng)
            chosen = self._draw_digits(classes, pools, rng)
            boxes = self._place_digits(num_digits, rng)
            canvas = self.images[index]
            for source, (top, left, bottom, right) in zip(chosen, boxes):
                np.maximum(canvas[top:bottom, left:right], digits[source], out=canvas[top:bottom, left:right])
            clutter = self._add_clutter(canvas, boxes, digits, np.concatenate(pools), rng)
            self.digit_boxes[index], self.digit_labels[index] = boxes, classes
            self.sources.append(tuple(int(s) for s in (*chosen, *clutter)))
            self.targets.append(target)

    def _draw_classes(self, index: int, rng: np.random.Generator) -> tuple[int, list[int]]:
        """The label of image ``index`` and the classes of its labelled digits."""
        if self.config.name == CLUTTER_TASK:
            return index % NUM_DIGIT_CLASSES, [index % NUM_DIGIT_CLASSES]
        same = index % 2
        classes = [int(rng.integers(NUM_DIGIT_CLASSES))] * 2 if same else rng.choice(NUM_DIGIT_CLASSES, 2, replace=False)
        return same, [int(c) for c in classes]

    @staticmethod
    def _draw_digits(classes: list[int], pools: list[np.ndarray], rng: np.random.Generator) -> list[int]:
        """Distinct source images of the given classes (two of one class are two different hands)."""
        if len(classes) == 2 and classes[0] == classes[1]:
            return [int(s) for s in rng.choice(pools[classes[0]], 2, replace=False)]
        return [int(rng.choice(pools[c])) for c in classes]

    def _place_digits(self, num_digits: int, rng: np.random.Generator) -> np.ndarray:
        """``(num_digits, 4)`` boxes; two digits span at least ``min_span`` pixels along x or y."""
        side, limit = self.config.digit_side, self.config.canvas - self.config.digit_side + 1
        for _ in range(MAX_PLACEMENT_TRIES):
            corners = rng.integers(limit, size=(num_digits, 2))
            span = corners.max(axis=0) - corners.min(axis=0) + side
            if num_digits == 1 or span.max() >= self.config.min_span:
                return np.concatenate([corners, corners + side], axis=1)
        raise ValueError(f"cannot place two digits {self.config.min_span} pixels apart on a {self.config.canvas} canvas")

    def _add_clutter(self, canvas: np.ndarray, boxes: np.ndarray, digits: np.ndarray, pool: np.ndarray,
                     rng: np.random.Generator) -> list[int]:
        """Pastes the clutter fragments (not touching a labelled digit); returns their source indices."""
        scale, size = self.config.digit_scale, self.config.clutter_size * self.config.digit_scale
        limit = self.config.canvas - size + 1
        sources = []
        for _ in range(self.config.num_clutter):
            for _ in range(MAX_PLACEMENT_TRIES):
                source = int(rng.choice(pool))
                row, col = rng.integers(DIGIT_SIDE - self.config.clutter_size + 1, size=2) * scale
                fragment = digits[source, row:row + size, col:col + size]
                top, left = rng.integers(limit, size=2)
                touches = ((top <= boxes[:, 2]) & (boxes[:, 0] <= top + size)
                           & (left <= boxes[:, 3]) & (boxes[:, 1] <= left + size)).any()
                if fragment.sum(dtype=np.int64) >= MIN_FRAGMENT_INK * scale**2 and not touches:
                    region = canvas[top:top + size, left:left + size]
                    np.maximum(region, fragment, out=region)
                    sources.append(source)
                    break
            else:
                raise ValueError(f"no room for clutter on a {self.config.canvas} canvas; lower num_clutter")
        return sources

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index], mode="L").convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


def build_task_datasets(spec: str, train_transform: Optional[Callable] = None,
                        eval_transform: Optional[Callable] = None) -> tuple[DigitTaskDataset, DigitTaskDataset]:
    """Training and held-out splits of the task named by ``spec`` (see :func:`parse_task`)."""
    config = parse_task(spec)
    return DigitTaskDataset("train", config, train_transform), DigitTaskDataset("val", config, eval_transform)
