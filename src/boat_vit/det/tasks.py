"""``digit-det``: a detection and instance-segmentation task made from scikit-learn's handwritten digits,
written as a real COCO-format folder (so training and evaluation read it through the same loader as COCO).

Every image is a ``canvas x canvas`` grey picture with one to a few handwritten digits (classes ``0``-``9``)
at random sizes and places, on a noisy background. A digit is an 8x8 source image scaled (bilinear) to its
box; its instance mask is its ink (scaled value above :data:`INK_THRESHOLD`), its box the tight box of that
ink, its area the ink's pixel count. Digits never overlap (their boxes keep :data:`GAP` pixels apart).
Masks are written as compressed RLE (digits such as 0, 6, 8 and 9 have holes, which polygons cannot hold).

Sources and splits: the 1,797 digits are split per class into a training pool and a held-out pool
(``heldout_fraction`` of each class, drawn with the seed); training images use only training-pool digits,
validation images only held-out ones. Image ``i`` of a split is drawn from a NumPy generator seeded with
``(seed, split, i)``: the same configuration gives the same files on every machine.

A task is named ``digit-det`` or ``digit-det:key=value,...`` with :class:`DigitDetConfig` fields, e.g.
``digit-det:canvas=96,train_size=500``. :func:`prepare_digit_det` writes it once to a cache folder
(``$BOAT_VIT_DATA``, default ``~/.cache/boat_vit``) and reuses it; :func:`write_digit_det` writes it anywhere.
"""
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image

from ..errors import ConfigError, OutputExistsError

__all__ = ["DIGIT_DET", "DigitDetConfig", "data_cache", "is_digit_det", "parse_digit_det", "prepare_digit_det",
           "write_digit_det"]

DIGIT_DET = "digit-det"
CACHE_VARIABLE = "BOAT_VIT_DATA"
DEFAULT_CACHE = Path("~/.cache/boat_vit")
CONFIG_FILE = "digit_det.json"  # the configuration a folder was written with
SPLITS = ("train", "val")
NUM_CLASSES = 10
DIGIT_MAX_LEVEL = 16.0  # scikit-learn's digits have grey levels 0..16
INK_THRESHOLD = 0.3  # a scaled digit's pixel is ink above this fraction of full intensity
GAP = 2  # pixels between the boxes of two digits
PLACEMENT_TRIES = 50
ASPECT_RANGE = (0.8, 1.25)  # digit height / width
BACKGROUND_LEVELS = (0, 80)
NOISE_STD = 10.0
INK_LEVELS = (150, 255)
_POOL_STREAM = 7  # generator stream of the train / held-out split of the sources


@dataclass(frozen=True)
class DigitDetConfig:
    """Everything that defines a ``digit-det`` folder (see the module docstring)."""

    canvas: int = 128
    min_digits: int = 1
    max_digits: int = 4
    min_size: int = 16  # digit width in pixels
    max_size: int = 48
    train_size: int = 1000
    val_size: int = 200
    heldout_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.min_digits <= self.max_digits:
            raise ConfigError(f"digit-det needs 1 <= min_digits <= max_digits, got {self.min_digits}, {self.max_digits}")
        if not 4 <= self.min_size <= self.max_size:
            raise ConfigError(f"digit-det needs 4 <= min_size <= max_size, got {self.min_size}, {self.max_size}")
        if self.max_size * ASPECT_RANGE[1] > self.canvas:
            raise ConfigError(f"digit-det: digits up to {self.max_size} pixels (x{ASPECT_RANGE[1]} tall) do not fit "
                             f"a {self.canvas}-pixel canvas")
        if self.train_size < 1 or self.val_size < 1:
            raise ConfigError(f"digit-det needs train_size and val_size >= 1, got {self.train_size}, {self.val_size}")
        if not 0 < self.heldout_fraction < 1:
            raise ConfigError(f"digit-det needs 0 < heldout_fraction < 1, got {self.heldout_fraction}")
        if self.seed < 0:
            raise ConfigError(f"digit-det needs seed >= 0, got {self.seed}")

    def key(self) -> str:
        """A short name of this configuration (its cache folder)."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return f"{DIGIT_DET}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def is_digit_det(spec: str) -> bool:
    """Whether ``spec`` names the task (``digit-det`` or ``digit-det:key=value,...``)."""
    return spec.split(":", 1)[0] == DIGIT_DET


def parse_digit_det(spec: str) -> DigitDetConfig:
    """``digit-det`` or ``digit-det:key=value,...`` -> :class:`DigitDetConfig`.

    Raises:
        ConfigError: another name, an unknown key or a value of the wrong type (named).
    """
    name, _, options = spec.partition(":")
    if name != DIGIT_DET:
        raise ConfigError(f"not a {DIGIT_DET} task: {spec!r}")
    fields = {f.name: f for f in dataclasses.fields(DigitDetConfig)}
    values = {}
    for item in filter(None, options.split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise ConfigError(f"bad task option {item!r} in {spec!r}; expected key=value with keys {sorted(fields)}")
        kind = type(fields[key].default)
        try:
            values[key] = kind(value)
        except ValueError:
            raise ConfigError(f"task option {key} needs a {kind.__name__}, got {value!r}") from None
    return DigitDetConfig(**values)


def _source_pools(labels: np.ndarray, config: DigitDetConfig) -> dict[str, list[np.ndarray]]:
    """Per split, per class: the source digits the split may use (disjoint between splits)."""
    rng = np.random.default_rng((config.seed, _POOL_STREAM))
    pools: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for label in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == label))
        heldout = max(1, round(config.heldout_fraction * len(members)))
        pools["val"].append(np.sort(members[:heldout]))
        pools["train"].append(np.sort(members[heldout:]))
    return pools


def _boxes_apart(box: tuple[int, int, int, int], others: list[tuple[int, int, int, int]]) -> bool:
    x, y, w, h = box
    return all(x + w + GAP <= ox or ox + ow + GAP <= x or y + h + GAP <= oy or oy + oh + GAP <= y
               for ox, oy, ow, oh in others)


def _draw_image(config: DigitDetConfig, sources: np.ndarray, pool: list[np.ndarray],
                rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """A canvas (uint8 ``(canvas, canvas)``) and its digits as ``(class, ink mask)`` on the canvas."""
    size = config.canvas
    background = rng.uniform(*BACKGROUND_LEVELS)
    canvas = background + rng.normal(0.0, NOISE_STD, (size, size))
    placed, digits = [], []
    for _ in range(int(rng.integers(config.min_digits, config.max_digits + 1))):
        label = int(rng.integers(NUM_CLASSES))
        source = sources[pool[label][rng.integers(len(pool[label]))]]
        width = int(rng.integers(config.min_size, config.max_size + 1))
        height = max(1, round(width * rng.uniform(*ASPECT_RANGE)))
        for _ in range(PLACEMENT_TRIES):
            box = (int(rng.integers(size - width + 1)), int(rng.integers(size - height + 1)), width, height)
            if _boxes_apart(box, placed):
                break
        else:
            continue  # no room left: fewer digits
        placed.append(box)
        x, y = box[:2]
        value = np.asarray(Image.fromarray(source.astype(np.float32) / DIGIT_MAX_LEVEL, mode="F")
                           .resize((width, height), Image.BILINEAR)).clip(0.0, 1.0)
        ink_level = rng.uniform(*INK_LEVELS)
        patch = canvas[y:y + height, x:x + width]
        canvas[y:y + height, x:x + width] = patch + (ink_level - patch) * value
        mask = np.zeros((size, size), dtype=np.uint8)
        mask[y:y + height, x:x + width] = value > INK_THRESHOLD
        if mask.any():
            digits.append((label, mask))
    return np.rint(canvas.clip(0, 255)).astype(np.uint8), digits


def _annotation(mask: np.ndarray, label: int, image_id: int, annotation_id: int) -> dict:
    from pycocotools import mask as mask_utils

    rows, columns = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    x, y = int(columns[0]), int(rows[0])
    rle = mask_utils.encode(np.asfortranarray(mask))
    return dict(id=annotation_id, image_id=image_id, category_id=label + 1, iscrowd=0, area=int(mask.sum()),
                bbox=[x, y, int(columns[-1]) + 1 - x, int(rows[-1]) + 1 - y],
                segmentation=dict(size=list(rle["size"]), counts=rle["counts"].decode("ascii")))


def _write_split(config: DigitDetConfig, root: Path, split: str, sources: np.ndarray,
                 pool: list[np.ndarray]) -> None:
    count = config.train_size if split == "train" else config.val_size
    folder = root / split
    folder.mkdir(parents=True)
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng((config.seed, SPLITS.index(split), index))
        canvas, digits = _draw_image(config, sources, pool, rng)
        file_name = f"{index:06d}.png"
        Image.fromarray(canvas, mode="L").convert("RGB").save(folder / file_name)
        images.append(dict(id=index + 1, file_name=file_name, width=config.canvas, height=config.canvas))
        for label, mask in digits:
            annotations.append(_annotation(mask, label, index + 1, len(annotations) + 1))
    categories = [dict(id=label + 1, name=str(label), supercategory="digit") for label in range(NUM_CLASSES)]
    document = dict(info=dict(description=f"{DIGIT_DET} {split}, {json.dumps(dataclasses.asdict(config))}"),
                    images=images, annotations=annotations, categories=categories)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(document))


def write_digit_det(root: Union[str, Path], config: DigitDetConfig = DigitDetConfig()) -> Path:
    """Writes the task as a COCO folder at ``root`` (``annotations/instances_{train,val}.json``,
    ``train/``, ``val/``); returns ``root``.

    The folder appears whole or not at all: it is written under a temporary name next to ``root`` and renamed.
    A folder that already holds this configuration is kept as it is.

    Raises:
        OutputExistsError: ``root`` exists and does not hold this configuration.
    """
    from sklearn.datasets import load_digits

    root = Path(root).expanduser()
    if root.exists():
        written = root / CONFIG_FILE
        if written.is_file() and json.loads(written.read_text()) == dataclasses.asdict(config):
            return root
        raise OutputExistsError(f"{root} exists and does not hold {DIGIT_DET} with {dataclasses.asdict(config)}")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        digits = load_digits()
        pools = _source_pools(digits.target, config)
        (staging / "annotations").mkdir()
        for split in SPLITS:
            _write_split(config, staging, split, digits.images, pools[split])
        (staging / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(config), indent=2))
        os.rename(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if root.is_dir() and (root / CONFIG_FILE).is_file():  # another process wrote it meanwhile
            return write_digit_det(root, config)
        raise
    return root


def data_cache() -> Path:
    """Where generated data sets live: ``$BOAT_VIT_DATA``, else ``~/.cache/boat_vit``."""
    return Path(os.environ.get(CACHE_VARIABLE) or DEFAULT_CACHE).expanduser()


def prepare_digit_det(spec: str, cache: Optional[Path] = None) -> Path:
    """The COCO folder of task ``spec``, written to the cache (:func:`data_cache`) the first time."""
    config = parse_digit_det(spec)
    return write_digit_det((cache or data_cache()) / config.key(), config)
