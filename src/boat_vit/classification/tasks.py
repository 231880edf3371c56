"""Synthetic classification tasks built from scikit-learn's handwritten digits, for the FSLA ablation.

Two tasks share one generator. Every image is a ``canvas x canvas`` grey image, black background, with
handwritten digits pasted at integer positions:

``digit-pairs`` (distance matters)
    Two digits, label ``same`` (1) when both show the same class, ``different`` (0) otherwise. The two are
    always *different* source images (same class means two hands, never a copy). Item ``i`` has label
    ``i % 2``, so labels are balanced exactly for an even size. A ``same`` pair draws its class uniformly
    from ``digit_classes``; a ``different`` pair draws two distinct classes uniformly, so each single
    digit's class is uniform under both labels: one digit alone says nothing about the label. The two
    digits' placement is one of (``placement``):

    * ``span`` (the default): uniformly at random subject to one rule, their boxes together span at least
      ``min_span`` pixels along x or along y (so they never overlap);
    * ``opposite``: at opposite edges of the canvas along a random axis (one box touches the low edge, the
      other the high edge; which digit goes where is random), each digit's other coordinate uniform. At
      the ablation's geometry this keeps the two digits out of every receptive field of a windowed model
      (:mod:`boat_vit.ablation`);
    * ``block``: both inside one ``block x block`` square of the canvas's aligned grid (a square drawn
      uniformly), side by side or one above the other (random), not overlapping, positions in the square
      uniform. With ``block`` equal to a window in pixels, both digits share that window.

    Why distance matters: a linear head over average-pooled tokens cannot compute "same" from tokens
    that never saw both digits (it would need ``g(a) + g(b) > t`` for every ``a = b`` and ``< t`` for
    every ``a != b``, which contradicts itself), so the comparison must happen inside the network, in an
    attention that holds tokens of both digits. With the defaults (32x32 canvas, 16-pixel digits,
    ``min_span=32``) the digits fill opposite halves of the canvas, their centres 16 pixels apart. For
    the ablation's Swin (patch 2, window 4: windows of 8 pixels in stage 1, 16 in stage 2, the whole
    image in stage 3) no stage-1 window holds ink of both digits, regular stage-2 windows hold one digit
    each, shifted stage-2 windows the inner halves of both; only stage 3 sees both whole. FSLA (in the
    shifted blocks of stages 1 and 2) can join them from stage 1 on.

    Default classes ``01``: in pilot runs with 4 or 10 classes neither the FSLA-off Swin nor the
    global-attention one left chance level within the ablation's training budget.

``digit-clutter`` (control: local evidence suffices)
    One digit, label its class; item ``i`` shows the ``i % len(digit_classes)``-th class, so class counts
    differ by at most one. Default classes: all ten.

Both tasks add the same clutter: ``num_clutter`` fragments, each a random ``clutter_size`` square crop
(scaled like the digits) with ink of a random source digit of any class, pasted at a random position
where its ink stays at least one pixel away from a labelled digit's ink (fragments may overlap each
other). Overlapping ink combines by maximum.

Sources and splits: the 1,797 digits (8x8, 17 grey levels, scaled to 0-255, each pixel repeated
``digit_scale`` times along both axes) are split per class into a training pool and a held-out pool
(``heldout_fraction`` of each class, drawn with the seed). Training images use only training-pool
digits, held-out images only held-out-pool digits, labelled digits and clutter alike: no source image
appears in both splits.

Determinism: the pools depend only on ``seed``; image ``i`` of a split is drawn from a NumPy generator
seeded with ``(seed, split, i)``, so it does not depend on the other images, the split size or the order
of access. Same configuration, same images, on every machine.

A task is named by a spec string, ``NAME`` or ``NAME:key=value,...`` with :class:`TaskConfig` fields,
e.g. ``digit-pairs:canvas=48,min_span=40,train_size=2000``; ``boat-vit train --data digit-pairs`` trains
any timm model on it (``--img-size`` equal to the canvas, no flips or crops: ``--hflip 0 --scale 1 1``).
"""
import dataclasses
import functools
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
    "GreyImageDataset",
    "GeneratedSplit",
    "generate_split",
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
PLACEMENTS = ("span", "opposite", "block")  # how the two digits of a pair are placed (module docstring)
DEFAULT_DIGIT_CLASSES = {PAIRS_TASK: "01", CLUTTER_TASK: "0123456789"}  # module docstring: why "01"
DIGIT_SIDE = 8  # scikit-learn's digits are 8x8
DIGIT_MAX_LEVEL = 16  # ... of 17 grey levels (0..16)
UINT8_MAX = 255
MIN_FRAGMENT_INK = 2 * UINT8_MAX  # a clutter fragment holds at least this much ink (about two full pixels)
MAX_PLACEMENT_TRIES = 1000  # rejection sampling of positions; a config that exhausts it is refused
CLUTTER_MARGIN = 1  # pixels of background kept between clutter ink and a labelled digit's ink
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
        min_span: ``digit-pairs`` with ``placement=span``: the two digits' boxes together span at least
            this many pixels along x or y.
        placement: ``digit-pairs``: ``span``, ``opposite`` or ``block`` (module docstring).
        block: ``digit-pairs`` with ``placement=block``: side in pixels of the aligned squares that hold
            both digits; divides ``canvas`` and holds two digits side by side.
        train_size: Images in the training split.
        heldout_size: Images in the held-out split.
        heldout_fraction: Share of each class's source digits reserved for the held-out split.
        seed: Seed of the source split and of every image.
        digit_classes: The digit classes drawn, as a string of distinct digits (at least two); empty: the
            task's default (``DEFAULT_DIGIT_CLASSES``).
    """

    name: str = PAIRS_TASK
    canvas: int = 32
    digit_scale: int = 2
    num_clutter: int = 3
    clutter_size: int = 3
    min_span: int = 32
    placement: str = "span"
    block: int = 16
    train_size: int = 3200
    heldout_size: int = 1000
    heldout_fraction: float = 0.5
    seed: int = 0
    digit_classes: str = ""

    def __post_init__(self):
        if self.name not in TASK_NAMES:
            raise ValueError(f"unknown task {self.name!r}; choose from {TASK_NAMES}")
        if not self.digit_classes:
            object.__setattr__(self, "digit_classes", DEFAULT_DIGIT_CLASSES[self.name])
        side = self.digit_side
        if self.canvas < side:
            raise ValueError(f"canvas {self.canvas} is smaller than a digit ({side} pixels)")
        if not 0 < self.clutter_size <= DIGIT_SIDE or self.num_clutter < 0:
            raise ValueError(f"need 0 < clutter_size <= {DIGIT_SIDE} and num_clutter >= 0")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {self.placement!r}")
        if self.name == PAIRS_TASK and self.placement == "span" and not 2 * side <= self.min_span <= self.canvas:
            raise ValueError(f"min_span must be in [{2 * side}, canvas={self.canvas}] for two {side}-pixel digits")
        if self.placement == "opposite" and self.canvas < 2 * side:
            raise ValueError(f"placement=opposite needs canvas >= {2 * side} for two {side}-pixel digits")
        if self.placement == "block" and not (2 * side <= self.block <= self.canvas and self.canvas % self.block == 0):
            raise ValueError(f"block must divide canvas={self.canvas} and be at least {2 * side} (two {side}-pixel "
                             f"digits side by side), got {self.block}")
        if len(set(self.digit_classes)) != len(self.digit_classes) or len(self.digit_classes) < 2 or not all(
                c in "0123456789" for c in self.digit_classes):
            raise ValueError(f"digit_classes must be at least two distinct digits, got {self.digit_classes!r}")
        if self.train_size < 1 or self.heldout_size < 1 or not 0 < self.heldout_fraction < 1:
            raise ValueError("need train_size >= 1, heldout_size >= 1 and 0 < heldout_fraction < 1")

    @property
    def digit_side(self) -> int:
        return DIGIT_SIDE * self.digit_scale

    @property
    def classes(self) -> list[str]:
        return list(PAIR_CLASSES) if self.name == PAIRS_TASK else list(self.digit_classes)

    @property
    def digit_values(self) -> list[int]:
        """The digit classes drawn, as integers."""
        return [int(c) for c in self.digit_classes]

    def spec(self) -> str:
        """The spec string that :func:`parse_task` turns back into this config (defaults left out)."""
        changed = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                   if f.name != "name" and getattr(self, f.name) not in (f.default, DEFAULT_DIGIT_CLASSES[self.name])]
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


@dataclass(frozen=True)
class GeneratedSplit:
    """The arrays of one generated split (see :class:`DigitTaskDataset` for the fields)."""

    images: np.ndarray
    targets: tuple[int, ...]
    digit_boxes: np.ndarray
    digit_labels: np.ndarray
    sources: tuple[tuple[int, ...], ...]


@functools.lru_cache(maxsize=4)
def generate_split(config: TaskConfig, split: str) -> GeneratedSplit:
    """Generates (and caches: runs of an ablation share a task) one split of a task (module docstring)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    digits, labels = load_source_digits()
    if config.digit_scale > 1:
        digits = digits.repeat(config.digit_scale, axis=1).repeat(config.digit_scale, axis=2)
    pools = _source_pools(labels, config)[split]
    clutter_pool = np.concatenate(pools)
    size = config.train_size if split == "train" else config.heldout_size
    num_digits = 2 if config.name == PAIRS_TASK else 1
    images = np.zeros((size, config.canvas, config.canvas), dtype=np.uint8)
    boxes = np.zeros((size, num_digits, 4), dtype=np.int64)
    digit_labels = np.zeros((size, num_digits), dtype=np.int64)
    sources, targets = [], []
    for index in range(size):
        rng = np.random.default_rng((config.seed, 1 + SPLITS.index(split), index))
        target, classes = _draw_classes(config, index, rng)
        chosen = _draw_digits(classes, pools, rng)
        boxes[index], digit_labels[index] = _place_digits(config, num_digits, rng), classes
        canvas = images[index]
        for source, (top, left, bottom, right) in zip(chosen, boxes[index]):
            np.maximum(canvas[top:bottom, left:right], digits[source], out=canvas[top:bottom, left:right])
        clutter = _add_clutter(config, canvas, digits, clutter_pool, rng)
        sources.append(tuple(int(s) for s in (*chosen, *clutter)))
        targets.append(target)
    for array in (images, boxes, digit_labels):
        array.flags.writeable = False  # shared through the cache
    return GeneratedSplit(images, tuple(targets), boxes, digit_labels, tuple(sources))


def _draw_classes(config: TaskConfig, index: int, rng: np.random.Generator) -> tuple[int, list[int]]:
    """The label of image ``index`` and the classes of its labelled digits."""
    labels = config.digit_values
    if config.name == CLUTTER_TASK:
        return index % len(labels), [labels[index % len(labels)]]
    same = index % 2
    classes = [rng.choice(labels)] * 2 if same else rng.choice(labels, 2, replace=False)
    return same, [int(c) for c in classes]


def _draw_digits(classes: list[int], pools: list[np.ndarray], rng: np.random.Generator) -> list[int]:
    """Distinct source images of the given classes (two of one class are two different hands)."""
    if len(classes) == 2 and classes[0] == classes[1]:
        return [int(s) for s in rng.choice(pools[classes[0]], 2, replace=False)]
    return [int(rng.choice(pools[c])) for c in classes]


def _place_digits(config: TaskConfig, num_digits: int, rng: np.random.Generator) -> np.ndarray:
    """``(num_digits, 4)`` boxes ``(top, left, bottom, right)`` as ``config.placement`` says."""
    side, limit = config.digit_side, config.canvas - config.digit_side + 1
    if num_digits == 2 and config.placement != "span":
        corners = _opposite_corners(config, rng) if config.placement == "opposite" else _block_corners(config, rng)
        return np.concatenate([corners, corners + side], axis=1)
    for _ in range(MAX_PLACEMENT_TRIES):
        corners = rng.integers(limit, size=(num_digits, 2))
        span = corners.max(axis=0) - corners.min(axis=0) + side
        if num_digits == 1 or span.max() >= config.min_span:
            return np.concatenate([corners, corners + side], axis=1)
    raise ValueError(f"cannot place two digits {config.min_span} pixels apart on a {config.canvas} canvas")


def _opposite_corners(config: TaskConfig, rng: np.random.Generator) -> np.ndarray:
    """Top-left corners of two digits at opposite edges along a random axis (the other axis uniform)."""
    side = config.digit_side
    axis, low_first = rng.integers(2, size=2)
    corners = rng.integers(config.canvas - side + 1, size=(2, 2))
    corners[:, axis] = (0, config.canvas - side) if low_first else (config.canvas - side, 0)
    return corners


def _block_corners(config: TaskConfig, rng: np.random.Generator) -> np.ndarray:
    """Top-left corners of two digits side by side inside one aligned ``block`` square."""
    side, block = config.digit_side, config.block
    origin = rng.integers(config.canvas // block, size=2) * block
    axis, low_first = rng.integers(2, size=2)
    first = rng.integers(block - 2 * side + 1)  # along the axis: the first digit, then the second after it
    second = rng.integers(first + side, block - side + 1)
    corners = rng.integers(block - side + 1, size=(2, 2))  # the other axis: independent
    corners[:, axis] = (first, second) if low_first else (second, first)
    return origin + corners


def _add_clutter(config: TaskConfig, canvas: np.ndarray, digits: np.ndarray, pool: np.ndarray,
                 rng: np.random.Generator) -> list[int]:
    """Pastes the clutter fragments, their ink off the labelled digits' ink; returns their source indices.

    ``canvas`` holds only the labelled digits when called. A fragment's ink may not fall on a labelled
    digit's ink or its ``CLUTTER_MARGIN``-pixel surround, so the digits stay intact.
    """
    scale, size = config.digit_scale, config.clutter_size * config.digit_scale
    limit = config.canvas - size + 1
    forbidden = _dilate(canvas > 0, CLUTTER_MARGIN)
    sources = []
    for _ in range(config.num_clutter):
        for _ in range(MAX_PLACEMENT_TRIES):
            source = int(rng.choice(pool))
            row, col = rng.integers(DIGIT_SIDE - config.clutter_size + 1, size=2) * scale
            fragment = digits[source, row:row + size, col:col + size]
            top, left = rng.integers(limit, size=2)
            if (fragment.sum(dtype=np.int64) >= MIN_FRAGMENT_INK * scale**2
                    and not (forbidden[top:top + size, left:left + size] & (fragment > 0)).any()):
                region = canvas[top:top + size, left:left + size]
                np.maximum(region, fragment, out=region)
                sources.append(source)
                break
        else:
            raise ValueError(f"no room for clutter on a {config.canvas} canvas; lower num_clutter")
    return sources


class GreyImageDataset(Dataset):
    """Grey uint8 images held in memory (``images``, ``targets``, ``transform`` set by a subclass); items are
    ``(transform(image), label)`` with the image as a PIL RGB image."""

    images: np.ndarray
    targets: list[int]
    transform: Optional[Callable]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index], mode="L").convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


class DigitTaskDataset(GreyImageDataset):
    """One split of a task (module docstring), items as in :class:`GreyImageDataset`.

    Attributes:
        config: The task.
        split: ``'train'`` or ``'val'`` (held out).
        classes: Class names.
        targets: Label of every image.
        images: ``(n, canvas, canvas)`` uint8 images (read-only).
        digit_boxes: ``(n, k, 4)`` boxes ``(top, left, bottom, right)`` of the labelled digits (``k`` = 2
            for pairs, 1 for clutter).
        digit_labels: ``(n, k)`` classes of the labelled digits.
        sources: Per image, the source digit indices used (labelled digits first, then clutter).
    """

    def __init__(self, split: str, config: TaskConfig = TaskConfig(), transform: Optional[Callable] = None):
        generated = generate_split(config, split)
        self.config, self.split, self.transform = config, split, transform
        self.classes = config.classes
        self.targets = list(generated.targets)
        self.images, self.digit_boxes = generated.images, generated.digit_boxes
        self.digit_labels, self.sources = generated.digit_labels, generated.sources



def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` grown by ``radius`` pixels (square neighbourhood)."""
    height, width = mask.shape
    padded = np.pad(mask, radius)
    out = np.zeros_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[dy:dy + height, dx:dx + width]
    return out


def build_task_datasets(spec: str, train_transform: Optional[Callable] = None,
                        eval_transform: Optional[Callable] = None) -> tuple[DigitTaskDataset, DigitTaskDataset]:
    """Training and held-out splits of the task named by ``spec`` (see :func:`parse_task`)."""
    config = parse_task(spec)
    return DigitTaskDataset("train", config, train_transform), DigitTaskDataset("val", config, eval_transform)
