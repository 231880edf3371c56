"""COCO-format detection data through pycocotools: loading, checking every annotation, training transforms.

Layout (COCO 2017, and the same for any other data set with its own categories)::

    ROOT/annotations/instances_{train2017,val2017}.json   (also instances_train.json / instances_val.json)
    ROOT/{train2017,val2017}/FILE_NAME                    (also ROOT/images/{...}/, or train/ and val/)

Every annotation is checked when a data set is loaded (before a run starts). What COCO's own tools drop
without a word is counted here and reported by kind (:class:`AnnotationReport`), or, with
``on_bad="error"``, stops with an error naming the file, the annotation id and what is wrong:

* malformed annotations (no usable ``image_id``, ``category_id`` or ``bbox``),
* annotations of an image id or a category id that the file does not define,
* zero-area boxes and boxes entirely outside their image,
* masks that do not parse (a polygon with fewer than three points or an odd number of coordinates, an RLE
  of another size or whose counts do not cover the image),
* images whose file is missing (their annotations go with them).

Boxes partly outside their image are clipped to it (counted). Crowd annotations (``iscrowd=1``) are not
training targets, as in COCO's protocol (evaluation treats them as regions to ignore). Images left without
annotations are kept or skipped (``keep_empty``). A file that is not COCO JSON, or whose image, annotation or
category ids are not integers or not unique, is an error.
"""
import contextlib
import io
import json
import math
import random
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..errors import Argument, ConfigError, DataError
from ..images import load_image

__all__ = [
    "BAD_ANNOTATION_KINDS",
    "AnnotationError",
    "AnnotationReport",
    "CategoryMap",
    "CocoDetection",
    "CocoSplit",
    "EvalTransform",
    "TrainTransform",
    "check_images",
    "checked_batches",
    "collate_detection",
    "read_coco_json",
    "resolve_coco_split",
    "scaled_size",
]

SPLIT_NAMES = {"train": ("train2017", "train"), "val": ("val2017", "val")}
ANNOTATION_FOLDER = "annotations"
BAD_ANNOTATION_KINDS = {  # kind -> how the report names it
    "malformed": "malformed annotations",
    "unknown_image": "annotations of an image id not in the file",
    "unknown_category": "annotations of a category id not in the file",
    "zero_area": "zero-area boxes",
    "outside": "boxes outside their image",
    "bad_mask": "masks that do not parse",
    "missing_image": "images whose file is missing",
}
ON_BAD = ("skip", "error")
EXAMPLES_SHOWN = 3  # examples quoted per kind of bad annotation
POLYGON_MIN_COORDINATES = 6  # three points
RLE_CHAR_OFFSET = 48  # COCO's compressed RLE: 5 bits per character from '0'
RLE_CHAR_BITS = 5
RLE_MORE_BIT = 0x20
RLE_SIGN_BIT = 0x10
RLE_CHAR_RANGE = (48, 111)  # characters a compressed RLE string can hold
CHECK_BATCH = 64


class AnnotationError(DataError):
    """A bad annotation found with ``on_bad="error"``: the message names the file and the annotation id."""


@dataclass(frozen=True)
class CocoSplit:
    """An annotation file and the folder its ``file_name`` entries are relative to."""

    annotations: Path
    images: Path


def resolve_coco_split(root: Union[str, Path], split: str) -> CocoSplit:
    """The annotation file and image folder of ``split`` (``train``, ``val`` or a name like ``val2017``).

    Raises:
        FileNotFoundError: no annotation file or image folder for the split (the paths tried are named).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    names = SPLIT_NAMES.get(split, (split,))
    for name in names:
        annotations = root / ANNOTATION_FOLDER / f"instances_{name}.json"
        if not annotations.is_file():
            continue
        for images in (root / name, root / "images" / name):
            if images.is_dir():
                return CocoSplit(annotations, images)
        raise FileNotFoundError(f"{annotations} has no image folder: expected {root / name} or {root / 'images' / name}")
    tried = ", ".join(f"{ANNOTATION_FOLDER}/instances_{name}.json" for name in names)
    raise FileNotFoundError(f"no {split} split under {root}: expected {tried}")


def read_coco_json(path: Union[str, Path]) -> dict:
    """A COCO annotation file, checked for the structure the loader relies on.

    Raises:
        FileNotFoundError: no such file.
        DataError: not JSON, missing ``images`` / ``annotations`` / ``categories`` lists, records without
            an integer ``id``, or an id defined twice (named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path} is not a JSON file: {error}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a COCO annotation file (a JSON object with images, annotations, categories)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path} has no '{key}' list: not a COCO instances file")
    for key, required in (("images", ("id", "file_name", "width", "height")), ("categories", ("id", "name"))):
        seen = set()
        for position, record in enumerate(data[key]):
            if not isinstance(record, dict) or any(name not in record for name in required):
                raise DataError(f"{path}: entry {position} of '{key}' lacks one of {list(required)}")
            if not _is_int(record["id"]):
                raise DataError(f"{path}: entry {position} of '{key}' has id {record['id']!r}, not an integer")
            if record["id"] in seen:
                raise DataError(f"{path}: {key[:-1]} id {record['id']} is defined twice")
            seen.add(record["id"])
        if key == "images":
            bad = next((r for r in data[key] if not all(_is_positive_int(r[k]) for k in ("width", "height"))), None)
            if bad is not None:
                raise DataError(f"{path}: image {bad['id']} has width {bad['width']!r}, height {bad['height']!r}")
    annotation_ids = [a.get("id") if isinstance(a, dict) else None for a in data["annotations"]]
    if None in annotation_ids:
        raise DataError(f"{path}: annotation {annotation_ids.index(None)} (0-based) has no id")
    position = next((i for i, annotation_id in enumerate(annotation_ids) if not _is_int(annotation_id)), None)
    if position is not None:
        raise DataError(f"{path}: annotation {position} (0-based) has id {annotation_ids[position]!r}, not an integer")
    duplicates = [i for i, n in Counter(annotation_ids).items() if n > 1]
    if duplicates:
        raise DataError(f"{path}: annotation id {duplicates[0]} is defined twice")
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive_int(value: Any) -> bool:
    return _is_int(value) and value > 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class CategoryMap:
    """Object categories in label order: label ``i + 1`` is category ``ids[i]`` (label 0: background)."""

    ids: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def from_coco(cls, categories: Sequence[dict]) -> "CategoryMap":
        ordered = sorted(categories, key=lambda category: category["id"])
        return cls(tuple(c["id"] for c in ordered), tuple(str(c["name"]) for c in ordered))

    def __len__(self) -> int:
        return len(self.ids)

    def label(self, category_id: int) -> int:
        return self.ids.index(category_id) + 1

    def category_id(self, label: int) -> int:
        return self.ids[label - 1]


def _compressed_rle_total(counts: str) -> Optional[int]:
    """Pixels covered by a compressed COCO RLE string, or ``None`` when it does not decode to valid counts."""
    values: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                return None
            code = ord(counts[position]) - RLE_CHAR_OFFSET
            if not RLE_CHAR_RANGE[0] <= code + RLE_CHAR_OFFSET <= RLE_CHAR_RANGE[1]:
                return None
            value |= (code & (RLE_MORE_BIT - 1)) << (RLE_CHAR_BITS * shift)
            more = bool(code & RLE_MORE_BIT)
            position += 1
            shift += 1
            if not more and code & RLE_SIGN_BIT:
                value |= -1 << (RLE_CHAR_BITS * shift)
        if len(values) > 2:  # counts after the second are stored as differences to the one two back
            value += values[-2]
        if value < 0:
            return None
        values.append(value)
    return sum(values)


def mask_problem(segmentation: Any, height: int, width: int) -> Optional[str]:
    """What keeps a COCO ``segmentation`` (polygons or RLE) from being a mask of a ``height x width`` image."""
    if isinstance(segmentation, list):
        if not segmentation:
            return "has no polygon"
        for polygon in segmentation:
            if not isinstance(polygon, list) or not all(_is_number(v) for v in polygon):
                return f"has a polygon that is not a list of numbers: {str(polygon)[:60]}"
            if len(polygon) < POLYGON_MIN_COORDINATES or len(polygon) % 2:
                return f"has a polygon of {len(polygon)} coordinates (needs an even number, at least 6)"
        return None
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if size != [height, width]:
            return f"is an RLE of size {size}, the image is [{height}, {width}]"
        if isinstance(counts, list):
            valid = all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)
            total = sum(counts) if valid else None
        elif isinstance(counts, str):
            total = _compressed_rle_total(counts)
        else:
            total = None
        if total != height * width:
            return "is an RLE whose counts do not cover the image"
        return None
    return f"is neither polygons nor an RLE: {type(segmentation).__name__}"


def decode_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A checked COCO ``segmentation`` as a ``(height, width)`` uint8 mask."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation, counts=segmentation["counts"].encode("ascii"))
    with warnings.catch_warnings():  # pycocotools' decoder predates NumPy 2's copy keyword and says so each call
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle)


@dataclass
class AnnotationReport:
    """What loading an annotation file kept, dropped (by kind, with examples) and changed."""

    file: str
    images: int = 0  # images in the file
    annotations: int = 0  # annotations in the file
    used_images: int = 0
    targets: int = 0  # annotations that are training targets (bad and crowd ones aside)
    bad: Counter = field(default_factory=Counter)  # kind (BAD_ANNOTATION_KINDS) -> count
    examples: dict[str, list[str]] = field(default_factory=dict)
    clipped: int = 0  # boxes partly outside their image, clipped to it
    crowd: int = 0  # crowd annotations: not training targets
    empty_images: int = 0  # images without targets
    empty_kept: bool = True

    @property
    def bad_total(self) -> int:
        return sum(self.bad.values())

    def add_bad(self, kind: str, example: str) -> None:
        self.bad[kind] += 1
        shown = self.examples.setdefault(kind, [])
        if len(shown) < EXAMPLES_SHOWN:
            shown.append(example)

    def summary(self) -> str:
        """A line of counts, then one line per kind of bad annotation with its first examples."""
        empty = f"{self.empty_images} without annotations {'kept' if self.empty_kept else 'skipped'}"
        lines = [f"{self.file}: {self.used_images} of {self.images} images ({empty}), {self.targets} of "
                 f"{self.annotations} annotations as targets; {self.crowd} crowd ignored, {self.clipped} boxes "
                 f"clipped to their image, {self.bad_total} bad annotations skipped"]
        for kind, count in sorted(self.bad.items()):
            lines.append(f"  {count} {BAD_ANNOTATION_KINDS[kind]}: {'; '.join(self.examples[kind])}"
                         f"{'; ...' if count > len(self.examples[kind]) else ''}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return dict(file=self.file, images=self.images, annotations=self.annotations, used_images=self.used_images,
                    targets=self.targets, bad=dict(self.bad), examples=self.examples, clipped=self.clipped,
                    crowd=self.crowd, empty_images=self.empty_images, empty_kept=self.empty_kept)


@dataclass
class _Record:
    """One image of a data set and its training targets (boxes ``x1, y1, x2, y2`` clipped to the image)."""

    image_id: int
    path: Path
    width: int
    height: int
    boxes: list[list[float]]
    labels: list[int]
    segmentations: list[Any]


class CocoDetection(Dataset):
    """A COCO-format split: items are ``(image, target)`` from ``transform(image, target)``.

    ``target`` holds ``boxes`` (float32 ``(N, 4)``, ``x1, y1, x2, y2`` in pixels), ``labels`` (int64, ``1..K``
    in :attr:`categories` order), ``masks`` (uint8 ``(N, H, W)``, with ``masks=True``) and ``image_id``. An
    image whose file cannot be read or whose size differs from the file's record becomes a
    :class:`~boat_vit.errors.DataError` (returned, not raised).

    Args:
        split: The annotation file and image folder.
        transform: ``(PIL image, target) -> (tensor, target)``; default :class:`EvalTransform`.
        masks: Decode instance masks (Mask R-CNN); their polygons and RLEs are checked either way.
        keep_empty: Keep images without targets (negatives); else skip them, as COCO training does.
        on_bad: ``"skip"``: drop bad annotations and count them in :attr:`report`; ``"error"``: raise
            :class:`AnnotationError` at the first.
        categories: The categories a model was trained on; the file must define the same ones.

    Raises:
        FileNotFoundError, DataError: see :func:`read_coco_json`; :class:`AnnotationError`; categories
            other than ``categories``; no image left.
    """

    def __init__(self, split: CocoSplit, transform: Optional[Callable] = None, masks: bool = True,
                 keep_empty: bool = True, on_bad: str = "skip", categories: Optional[CategoryMap] = None):
        if on_bad not in ON_BAD:
            raise ConfigError(Argument("on_bad"), f" must be one of {ON_BAD}, got {on_bad!r}")
        self.split, self.masks, self.on_bad = split, masks, on_bad
        self.transform = transform or EvalTransform()
        data = read_coco_json(split.annotations)
        self.categories = CategoryMap.from_coco(data["categories"])
        if not self.categories.ids:
            raise DataError(f"{split.annotations} defines no categories")
        if categories is not None and categories != self.categories:
            raise DataError(f"{split.annotations} has categories {list(self.categories.names)}, the model was "
                             f"trained on {list(categories.names)}")
        self.report = AnnotationReport(str(split.annotations), images=len(data["images"]),
                                       annotations=len(data["annotations"]), empty_kept=keep_empty)
        self.records, self.ground_truth = self._check(data, keep_empty)
        if not self.records:
            raise DataError(f"{split.annotations}: no image left to use ({self.report.summary()})")
        self._coco = None

    def _bad(self, kind: str, annotation_id: Any, image: Optional[dict], what: str) -> None:
        """Counts (or raises, with ``on_bad="error"``) a bad annotation, or an image (``annotation_id=None``)."""
        if annotation_id is None:
            where = f"image {image['id']} ({image['file_name']})"
        else:
            where = f"annotation {annotation_id}" + (f" (image {image['id']}, {image['file_name']})" if image else "")
        if self.on_bad == "error":
            raise AnnotationError(f"{self.split.annotations}: {where}: {what}")
        self.report.add_bad(kind, f"{where} {what}")

    def _check(self, data: dict, keep_empty: bool) -> tuple[list[_Record], dict]:
        """The usable images with their targets, and the ground truth for evaluation (bad annotations out)."""
        images = {image["id"]: image for image in data["images"]}
        category_ids = set(self.categories.ids)
        present: dict[int, _Record] = {}
        for image in data["images"]:
            path = self.split.images / str(image["file_name"])
            if path.is_file():
                present[image["id"]] = _Record(image["id"], path, image["width"], image["height"], [], [], [])
            else:
                self._bad("missing_image", None, image, f"has no file {path}")
        kept = []
        for annotation in data["annotations"]:
            image = self._checked_image(annotation, images, category_ids)
            if image is None:
                continue
            record = present.get(image["id"])
            if record is None:  # its image file is missing (counted once per image)
                continue
            kept.append(annotation)
            if annotation.get("iscrowd", 0):
                self.report.crowd += 1
                continue
            x, y, w, h = annotation["bbox"]
            box = [max(x, 0.0), max(y, 0.0), min(x + w, image["width"]), min(y + h, image["height"])]
            self.report.clipped += box != [x, y, x + w, y + h]
            record.boxes.append([float(v) for v in box])
            record.labels.append(self.categories.label(annotation["category_id"]))
            record.segmentations.append(annotation.get("segmentation"))
        records = []
        for record in present.values():
            if not record.boxes:
                self.report.empty_images += 1
                if not keep_empty:
                    continue
            records.append(record)
        self.report.used_images = len(records)
        self.report.targets = sum(len(record.boxes) for record in records)
        ground_truth = dict(data, images=[images[i] for i in present],
                            annotations=[dict(a, area=a.get("area", a["bbox"][2] * a["bbox"][3])) for a in kept])
        return records, ground_truth

    def _checked_image(self, annotation: dict, images: dict[int, dict], category_ids: set) -> Optional[dict]:
        """The image record of a usable ``annotation``; ``None`` for a bad one, counted (or raised) by kind."""
        annotation_id = annotation["id"]
        image_id, category_id, bbox = (annotation.get(key) for key in ("image_id", "category_id", "bbox"))
        if not (isinstance(image_id, int) and isinstance(category_id, int) and isinstance(bbox, list)
                and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            self._bad("malformed", annotation_id, None, f"has no usable image_id, category_id or bbox "
                      f"(image_id {image_id!r}, category_id {category_id!r}, bbox {bbox!r})")
            return None
        image = images.get(image_id)
        if image is None:
            self._bad("unknown_image", annotation_id, None, f"names image id {image_id}, which the file does not "
                      "define")
            return None
        if category_id not in category_ids:
            self._bad("unknown_category", annotation_id, image, f"names category id {category_id}, which the file "
                      f"does not define (it has {sorted(category_ids)})")
            return None
        x, y, w, h = bbox
        if w <= 0 or h <= 0:
            self._bad("zero_area", annotation_id, image, f"has a zero-area box {bbox}")
            return None
        if x >= image["width"] or y >= image["height"] or x + w <= 0 or y + h <= 0:
            self._bad("outside", annotation_id, image, f"has box {bbox} outside the {image['width']}x"
                      f"{image['height']} image")
            return None
        if self.masks and ("segmentation" in annotation or not annotation.get("iscrowd", 0)):
            problem = mask_problem(annotation.get("segmentation"), image["height"], image["width"])
            if problem is not None:
                self._bad("bad_mask", annotation_id, image, f"mask {problem}")
                return None
        return image

    @property
    def coco(self):
        """The ground truth as a pycocotools ``COCO`` index (bad annotations and missing images left out)."""
        if self._coco is None:
            from pycocotools.coco import COCO

            coco = COCO()
            coco.dataset = self.ground_truth
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                coco.createIndex()
            self._coco = coco
        return self._coco

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, index: int) -> Path:
        return self.records[index].path

    def load(self, index: int) -> tuple[Image.Image, dict]:
        """The image and its target (untransformed) of item ``index``.

        Raises:
            FileNotFoundError, ValueError: the image cannot be read (:class:`DataError`: it has another size
                than its record).
        """
        record = self.records[index]
        image = load_image(record.path)
        if image.size != (record.width, record.height):
            raise DataError(f"image {record.path} is {image.width}x{image.height} but {self.split.annotations} "
                             f"says {record.width}x{record.height} (image {record.image_id})")
        target = dict(
            boxes=torch.tensor(record.boxes, dtype=torch.float32).reshape(-1, 4),
            labels=torch.tensor(record.labels, dtype=torch.int64),
            image_id=record.image_id,
        )
        if self.masks:
            masks = [decode_mask(s, record.height, record.width) for s in record.segmentations]
            target["masks"] = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(
                0, record.height, record.width, dtype=torch.uint8)
        return image, target

    def check(self, index: int) -> Optional[str]:
        """What is wrong with item ``index``'s image file (``None``: nothing); reads only its header."""
        record = self.records[index]
        try:
            with Image.open(record.path) as image:
                size = image.size
        except (OSError, Image.DecompressionBombError) as error:
            return f"cannot read image {record.path}: {error}"
        if size != (record.width, record.height):
            return (f"image {record.path} is {size[0]}x{size[1]} but {self.split.annotations} says "
                    f"{record.width}x{record.height} (image {record.image_id})")
        return None

    def __getitem__(self, index: int):
        try:
            image, target = self.load(index)
        except (OSError, ValueError) as error:
            return error if isinstance(error, DataError) else DataError(str(error))  # reaches the main process
        return self.transform(image, target)


def collate_detection(batch: Sequence) -> Union[tuple[list[torch.Tensor], list[dict]], DataError]:
    """Lists of images and targets (sizes differ), or the first :class:`~boat_vit.errors.DataError` of the batch."""
    errors = [item for item in batch if isinstance(item, DataError)]
    if errors:
        return errors[0]
    images, targets = zip(*batch)
    return list(images), list(targets)


def checked_batches(loader: Iterable) -> Iterator[tuple[list[torch.Tensor], list[dict]]]:
    """The batches of ``loader``; a :class:`~boat_vit.errors.DataError` a worker returned is raised here, in the main process."""
    for batch in loader:
        if isinstance(batch, DataError):
            raise batch
        yield batch


class _ImageChecks(Dataset):
    def __init__(self, dataset: CocoDetection):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Optional[str]:
        return self.dataset.check(index)


def check_images(dataset: CocoDetection, workers: int = 0) -> None:
    """Reads the header of every image of ``dataset`` before a run uses them.

    Raises:
        DataError: the problems found (the first, and how many images have one).
    """
    loader = DataLoader(_ImageChecks(dataset), batch_size=CHECK_BATCH, num_workers=workers, collate_fn=list,
                        generator=torch.Generator())
    problems = [problem for batch in loader for problem in batch if problem is not None]
    if problems:
        more = f" (and {len(problems) - 1} more images with problems)" if len(problems) > 1 else ""
        raise DataError(f"{problems[0]}{more}")


def scaled_size(width: int, height: int, shorter: int, longer: int) -> tuple[int, int]:
    """``(width, height)`` scaled, aspect kept, to shorter side ``shorter`` unless the longer side then
    exceeds ``longer`` (then to longer side ``longer``), rounded to pixels: the COCO resize rule."""
    factor = min(shorter / min(width, height), longer / max(width, height))
    return max(1, int(width * factor + 0.5)), max(1, int(height * factor + 0.5))


class TrainTransform:
    """The training pipeline: resize to a shorter side drawn from ``scales`` (longer side at most
    ``max_size``), horizontal flip with probability ``hflip``; driven by Python's ``random`` (seeded per
    sample by the run). Boxes and masks follow the image."""

    def __init__(self, scales: Sequence[int], max_size: int, hflip: float = 0.5):
        if not scales:
            raise ConfigError(Argument("scales"), " must name at least one shorter-side length")
        self.scales, self.max_size, self.hflip = tuple(scales), max_size, hflip

    def __call__(self, image: Image.Image, target: dict) -> tuple[torch.Tensor, dict]:
        target = dict(target)
        width, height = image.size
        size = scaled_size(width, height, random.choice(self.scales), self.max_size)
        if size != (width, height):
            image = image.resize(size, Image.BILINEAR)
            target["boxes"] = target["boxes"] * torch.tensor([size[0] / width, size[1] / height] * 2)
            if "masks" in target:
                target["masks"] = F.interpolate(target["masks"][None], size=(size[1], size[0]), mode="nearest")[0]
        if random.random() < self.hflip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
            boxes = target["boxes"].clone()
            boxes[:, [0, 2]] = size[0] - target["boxes"][:, [2, 0]]
            target["boxes"] = boxes
            if "masks" in target:
                target["masks"] = target["masks"].flip(-1)
        return TF.to_tensor(image), target


class EvalTransform:
    """The test pipeline: the image as a tensor in [0, 1]; the detector resizes to its test scale itself."""

    def __call__(self, image: Image.Image, target: dict) -> tuple[torch.Tensor, dict]:
        return TF.to_tensor(image), target
