"""Segmentation data: ADE20K and any folder of images with PNG label maps; label-aware augmentation.

Layout (ADE20K's ``ADEChallengeData2016``, and the same for any other data set)::

    ROOT/images/{training,validation}/NAME.jpg        (also train/val; .jpg, .jpeg, .png, .bmp, .tif)
    ROOT/annotations/{training,validation}/NAME.png    (one class index per pixel)

ADE20K: 150 classes; label 0 is "other" and ignored: labels shift by -1 and 0 becomes the ignore index
(``reduce_zero_label``). Other data sets give their class count and ignore index.
"""
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset

from ..errors import Argument, ConfigError, DataError
from ..images import load_image

__all__ = [
    "ADE20K_CLASSES",
    "DatasetSpec",
    "EvalTransform",
    "SegmentationFolder",
    "TrainAugmentation",
    "check_samples",
    "checked_batches",
    "collate_segmentation",
    "dataset_spec",
    "resolve_split",
    "rescale_size",
]

ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)
ADE20K_FOLDER = "ADEChallengeData2016"
IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
LABEL_SUFFIX = ".png"
SPLIT_NAMES = {"training": ("training", "train"), "validation": ("validation", "val")}
LABEL_FOLDERS = ("annotations", "labels")
NAMES_SHOWN = 5
# photometric distortion of the released recipe (mmseg PhotoMetricDistortion), on images scaled to [0, 1]
BRIGHTNESS_DELTA = 32 / 255
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18 / 180  # OpenCV hue units (0..180) as a fraction of the colour circle
CROP_TRIES = 10  # attempts at a crop that no single class dominates (cat_max_ratio)
CHECK_BATCH = 64  # samples per batch when every sample is checked before training


@dataclass(frozen=True)
class DatasetSpec:
    """Class count, ignore index and label convention of a data set."""

    num_classes: int
    ignore_index: int = IGNORE_INDEX
    reduce_zero_label: bool = False
    class_names: tuple[str, ...] = ()

    def __post_init__(self):
        if self.num_classes < 1:
            raise ValueError(f"the number of classes must be positive, got {self.num_classes}")
        if 0 <= self.ignore_index < self.num_classes:
            raise ValueError(f"ignore index {self.ignore_index} is a class index (0..{self.num_classes - 1})")
        if not self.class_names:
            object.__setattr__(self, "class_names", tuple(str(i) for i in range(self.num_classes)))


def dataset_spec(
    dataset: str,
    num_classes: Optional[int] = None,
    ignore_index: Optional[int] = None,
    reduce_zero_label: Optional[bool] = None,
) -> DatasetSpec:
    """The spec of ``dataset`` (``"ade20k"`` or ``"folder"``), with explicit values taking precedence."""
    ignore = IGNORE_INDEX if ignore_index is None else ignore_index
    if dataset == "ade20k":
        names = ADE20K_CLASSES if num_classes in (None, len(ADE20K_CLASSES)) else ()
        return DatasetSpec(num_classes or len(ADE20K_CLASSES), ignore,
                           True if reduce_zero_label is None else reduce_zero_label, names)
    if dataset == "folder":
        if num_classes is None:
            raise ConfigError("a 'folder' data set needs its number of classes (", Argument("num_classes"), ")")
        return DatasetSpec(num_classes, ignore, bool(reduce_zero_label))
    raise ConfigError(Argument("dataset"), f" {dataset!r} is unknown; choose 'ade20k' or 'folder'")


def resolve_split(root: Path, split: str) -> tuple[Path, Path]:
    """The image and label folders of ``split`` (``training`` / ``validation``) under ``root``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    if (root / ADE20K_FOLDER).is_dir():
        root = root / ADE20K_FOLDER
    names = SPLIT_NAMES.get(split, (split,))
    for name in names:
        images = root / "images" / name
        for folder in LABEL_FOLDERS:
            if images.is_dir() and (root / folder / name).is_dir():
                return images, root / folder / name
    raise FileNotFoundError(
        f"no {split} split under {root}: expected images/{names[0]}/ and annotations/{names[0]}/ "
        f"(or {'/'.join(names[1:] or names)} and labels/)"
    )


def _listing(names: Sequence[str]) -> str:
    more = f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else ""
    return ", ".join(names[:NAMES_SHOWN]) + more


def rescale_size(width: int, height: int, scale: Sequence[int]) -> tuple[int, int]:
    """``(width, height)`` resized, aspect kept, to fit ``scale`` (long edge <= max, short edge <= min)."""
    factor = min(max(scale) / max(width, height), min(scale) / min(width, height))
    return int(width * factor + 0.5), int(height * factor + 0.5)


class SegmentationFolder(Dataset):
    """Pairs of an image and a PNG label map, matched by file name; items come from ``transform``.

    ``transform(image, label)`` takes a PIL RGB image and an int64 label array (classes ``0..K-1`` and
    the ignore index, ``reduce_zero_label`` applied). A sample whose label has values outside the classes
    or whose image and label sizes differ becomes a :class:`DataError` naming the file.

    Raises:
        FileNotFoundError: the split's folders are missing.
        DataError: no images, or images without labels / labels without images (named).
    """

    def __init__(self, root: Path, split: str, spec: DatasetSpec, transform):
        self.image_dir, self.label_dir = resolve_split(root, split)
        images = {p.stem: p for p in sorted(self.image_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
        labels = {p.stem: p for p in sorted(self.label_dir.iterdir()) if p.suffix.lower() == LABEL_SUFFIX}
        if not images:
            raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {self.image_dir}")
        unlabelled = sorted(set(images) - set(labels))
        if unlabelled:
            raise DataError(f"{len(unlabelled)} images in {self.image_dir} have no label map {LABEL_SUFFIX} in "
                             f"{self.label_dir}: {_listing(unlabelled)}")
        orphans = sorted(set(labels) - set(images))
        if orphans:
            raise DataError(f"{len(orphans)} label maps in {self.label_dir} have no image in {self.image_dir}: "
                             f"{_listing(orphans)}")
        self.names = sorted(images)
        self.samples = [(images[n], labels[n]) for n in self.names]
        self.spec = spec
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """The image and its label map (int64, classes and ignore index) of sample ``index``.

        Raises:
            DataError: unreadable files, different sizes or label values outside the classes.
        """
        image = load_image(self.samples[index][0])
        return image, self._label(index, image.size)

    def check(self, index: int) -> Optional[str]:
        """What is wrong with sample ``index`` (``None``: nothing); reads only the image's header."""
        image_path = self.samples[index][0]
        try:
            with Image.open(image_path) as image:
                size = image.size
            self._label(index, size)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            return str(error) if isinstance(error, ValueError) else f"cannot read image {image_path}: {error}"
        return None

    def _label(self, index: int, image_size: tuple[int, int]) -> np.ndarray:
        """The label map of sample ``index`` (classes and ignore index), checked against the image's size."""
        image_path, label_path = self.samples[index]
        try:
            with Image.open(label_path) as label_image:
                label = np.asarray(label_image, dtype=np.int64)
                mode, size = label_image.mode, label_image.size
        except (OSError, Image.DecompressionBombError) as error:
            raise DataError(f"cannot read label map {label_path}: {error}") from None
        if label.ndim != 2:
            raise DataError(f"label map {label_path} is not single-channel (PIL mode {mode})")
        if image_size != size:
            raise DataError(f"image {image_path} is {image_size[0]}x{image_size[1]} but its label map "
                             f"{label_path} is {size[0]}x{size[1]}")
        spec = self.spec
        if spec.reduce_zero_label:  # 0 ("other") is ignored, classes shift down by one, ignored stays ignored
            label = np.where((label == 0) | (label == spec.ignore_index), spec.ignore_index, label - 1)
        bad = np.unique(label[(label != spec.ignore_index) & ((label < 0) | (label >= spec.num_classes))])
        if bad.size:
            shift = 1 if spec.reduce_zero_label else 0
            values = ", ".join(str(v + shift) for v in bad[:NAMES_SHOWN].tolist())
            raise DataError(
                f"label map {label_path} has values outside the {spec.num_classes} classes: {values}"
                f"{' ...' if bad.size > NAMES_SHOWN else ''} (allowed: {shift}..{spec.num_classes - 1 + shift} "
                f"and the ignore index {spec.ignore_index})"
            )
        return label

    def __getitem__(self, index: int):
        try:
            image, label = self.load(index)
        except ValueError as error:
            return DataError(str(error))  # returned, not raised: it reaches the main process as a batch
        return (*self.transform(image, label), self.names[index])


def collate_segmentation(batch: Sequence) -> Union[tuple[torch.Tensor, torch.Tensor, list[str]], DataError]:
    """Stacks ``(image, label, name)`` items, or passes on the first :class:`DataError` of the batch."""
    errors = [item for item in batch if isinstance(item, DataError)]
    if errors:
        return errors[0]
    images, labels, names = zip(*batch)
    return torch.stack(images), torch.stack(labels), list(names)


class _SampleChecks(Dataset):
    """``check(index)`` of every sample of a :class:`SegmentationFolder`, for a DataLoader's workers."""

    def __init__(self, folder: "SegmentationFolder"):
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> Optional[str]:
        return self.folder.check(index)


def check_samples(folder: "SegmentationFolder", workers: int = 0) -> None:
    """Reads every label map of ``folder`` (and each image's header) before a run uses them.

    Raises:
        DataError: the problems found (the first one, and how many samples have one).
    """
    from torch.utils.data import DataLoader

    loader = DataLoader(_SampleChecks(folder), batch_size=CHECK_BATCH, num_workers=workers, collate_fn=list,
                        generator=torch.Generator())
    problems = [problem for batch in loader for problem in batch if problem is not None]
    if problems:
        more = f" (and {len(problems) - 1} more samples with problems)" if len(problems) > 1 else ""
        raise DataError(f"{problems[0]}{more}")


def checked_batches(loader: Iterable) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """The batches of ``loader``; a :class:`~boat_vit.errors.DataError` a worker returned is raised here, in the
    main process."""
    for batch in loader:
        if isinstance(batch, DataError):
            raise batch
        yield batch


def _normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    return TF.normalize(image, list(mean), list(std))


class TrainAugmentation:
    """The released training pipeline, label-aware, driven by Python's ``random`` (seeded per sample).

    Random rescale of ``scale`` by a ratio in ``ratio_range`` (aspect kept), random crop of ``crop_size``
    (retried until no class covers ``cat_max_ratio`` of it, when below 1), horizontal flip, photometric
    distortion (brightness, contrast, saturation, hue; each with probability 0.5, contrast first or last),
    normalisation, padding to the crop size (image 0, label ignore index).
    """

    def __init__(
        self,
        crop_size: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        scale: Sequence[int] = (2048, 512),
        ratio_range: Sequence[float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        hflip: float = 0.5,
        photometric: bool = True,
        ignore_index: int = IGNORE_INDEX,
    ):
        self.crop_h, self.crop_w = crop_size
        self.mean, self.std = mean, std
        self.scale, self.ratio_range = scale, ratio_range
        self.cat_max_ratio, self.hflip, self.photometric = cat_max_ratio, hflip, photometric
        self.ignore_index = ignore_index

    def _crop_box(self, label: np.ndarray) -> tuple[int, int, int, int]:
        height, width = label.shape
        for _ in range(CROP_TRIES):
            top = random.randint(0, max(height - self.crop_h, 0))
            left = random.randint(0, max(width - self.crop_w, 0))
            box = (top, left, min(top + self.crop_h, height), min(left + self.crop_w, width))
            if self.cat_max_ratio >= 1:
                break
            window = label[box[0]:box[2], box[1]:box[3]]
            _, counts = np.unique(window[window != self.ignore_index], return_counts=True)
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        return box

    @staticmethod
    def _distort(image: torch.Tensor) -> torch.Tensor:
        if random.random() < 0.5:
            image = (image + random.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA)).clamp(0, 1)
        contrast_first = random.random() < 0.5
        contrast = random.uniform(*CONTRAST_RANGE) if random.random() < 0.5 else None
        if contrast is not None and contrast_first:
            image = (image * contrast).clamp(0, 1)
        if random.random() < 0.5:
            image = TF.adjust_saturation(image, random.uniform(*SATURATION_RANGE))
        if random.random() < 0.5:
            image = TF.adjust_hue(image, random.uniform(-HUE_DELTA, HUE_DELTA))
        if contrast is not None and not contrast_first:
            image = (image * contrast).clamp(0, 1)
        return image

    def __call__(self, image: Image.Image, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        ratio = random.uniform(*self.ratio_range)
        size = rescale_size(*image.size, [s * ratio for s in self.scale])
        image = image.resize(size, Image.BILINEAR)
        label = np.asarray(Image.fromarray(label.astype(np.int32)).resize(size, Image.NEAREST), dtype=np.int64)
        top, left, bottom, right = self._crop_box(label)
        image = image.crop((left, top, right, bottom))
        label = label[top:bottom, left:right]
        if random.random() < self.hflip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
            label = label[:, ::-1]
        pixels = TF.to_tensor(image)
        if self.photometric:
            pixels = self._distort(pixels)
        pixels = _normalize(pixels, self.mean, self.std)
        target = torch.from_numpy(np.ascontiguousarray(label))
        pad_h, pad_w = self.crop_h - pixels.shape[1], self.crop_w - pixels.shape[2]
        if pad_h > 0 or pad_w > 0:
            pixels = torch.nn.functional.pad(pixels, (0, max(pad_w, 0), 0, max(pad_h, 0)))
            target = torch.nn.functional.pad(target, (0, max(pad_w, 0), 0, max(pad_h, 0)), value=self.ignore_index)
        return pixels, target


class EvalTransform:
    """Test pipeline: resize to ``scale`` (aspect kept; ``None``: as is), normalise; the label stays as is."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], scale: Optional[Sequence[int]] = None):
        self.mean, self.std, self.scale = mean, std, scale

    def image(self, image: Image.Image) -> torch.Tensor:
        if self.scale is not None:
            image = image.resize(rescale_size(*image.size, self.scale), Image.BILINEAR)
        return _normalize(TF.to_tensor(image), self.mean, self.std)

    def __call__(self, image: Image.Image, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image(image), torch.from_numpy(label)
