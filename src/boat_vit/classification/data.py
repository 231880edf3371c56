"""Classification data: the embedded handwritten digits and ImageNet-style folders."""
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import has_file_allowed_extension

from ..images import to_rgb

from .tasks import TASK_NAMES, DigitTaskDataset, GreyImageDataset, build_task_datasets, is_task_spec, parse_task

__all__ = [
    "EMBEDDED_DATASETS",
    "DigitsDataset",
    "TolerantImageFolder",
    "build_datasets",
    "build_eval_dataset",
    "collate_skipping",
]

EMBEDDED_DATASETS = ("digits", *TASK_NAMES)  # the generated tasks also take options: .tasks
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
DIGITS_MAX_LEVEL = 16  # the digits are 8x8 images of 17 grey levels (0..16)
UINT8_MAX = 255


class DigitsDataset(GreyImageDataset):
    """scikit-learn's 1,797 real handwritten digits, split reproducibly (stratified) into train and test.

    Items are ``(transform(image), label)`` with the 8x8 image as a PIL RGB image (:class:`GreyImageDataset`).
    """

    def __init__(self, split: str, transform: Optional[Callable] = None):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        digits = load_digits()
        indices = np.arange(len(digits.target))
        train_idx, val_idx = train_test_split(
            indices, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=digits.target
        )
        chosen = train_idx if split == "train" else val_idx
        scaled = np.rint(digits.images[chosen] * (UINT8_MAX / DIGITS_MAX_LEVEL)).astype(np.uint8)
        self.images = scaled
        self.targets = digits.target[chosen].tolist()
        self.classes = [str(label) for label in range(10)]
        self.transform = transform


def _read_rgb(path: str) -> Image.Image:
    """The image at ``path`` as 8-bit RGB (16-bit grey images scaled, not clipped)."""
    with Image.open(path) as image:
        return to_rgb(image)


class TolerantImageFolder(ImageFolder):
    """An ImageFolder that survives real folders: unreadable images (corrupt, truncated, too large to decode
    safely) yield ``None`` instead of raising, 16-bit images keep their contrast, and a symbolic link that
    loops back (``self -> .``) is followed only once.

    :func:`collate_skipping` drops the ``None`` samples and counts them, so a run reports them instead of crashing.
    """

    def __init__(self, root, transform: Optional[Callable] = None):
        super().__init__(root, transform=transform, loader=_read_rgb)

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        """Image files of each class folder, walked through symbolic links but through each real folder once."""
        if is_valid_file is None:
            def is_valid_file(path: str) -> bool:
                return has_file_allowed_extension(path, extensions)
        instances, empty = [], []
        for name in sorted(class_to_idx):
            folder = os.path.join(directory, name)
            if not os.path.isdir(folder):
                continue
            visited, walked = set(), []
            for root, folders, files in os.walk(folder, followlinks=True):
                real = os.path.realpath(root)
                if real in visited:
                    folders[:] = []  # a link back into a folder already walked
                    continue
                visited.add(real)
                walked.append((root, files))
            found = [(os.path.join(root, file), class_to_idx[name]) for root, files in sorted(walked)
                     for file in sorted(files) if is_valid_file(os.path.join(root, file))]
            instances += found
            if not found:
                empty.append(name)
        if empty and not allow_empty:
            raise FileNotFoundError(f"Found no valid file for the classes {', '.join(empty)}")
        return instances

    def __getitem__(self, index: int):
        try:
            return super().__getitem__(index)
        except (OSError, ValueError, Image.DecompressionBombError):  # PIL's errors for unreadable files
            return None


def collate_skipping(batch: Sequence) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Collates a batch without its unreadable samples; returns ``(images, targets, skipped)``."""
    kept = [item for item in batch if item is not None]
    skipped = len(batch) - len(kept)
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images, targets = default_collate(kept)
    return images, targets, skipped


def _check_folder(path: Path, role: str) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"{role} folder not found: {path}")
    if not any(child.is_dir() for child in path.iterdir()):
        raise ValueError(f"{role} folder {path} has no class sub-folders (expected one folder per class)")


def build_datasets(data: str, train_transform: Callable, eval_transform: Callable) -> tuple[Dataset, Dataset]:
    """Train and validation datasets for ``data``: an embedded dataset name or an ImageNet-style folder.

    A folder must hold ``train/`` and ``val/`` with the same class sub-folders. A task spec
    (:func:`boat_vit.classification.tasks.parse_task`, e.g. ``digit-pairs:canvas=64``) gives its training and held-out splits.
    """
    if is_task_spec(data):
        return build_task_datasets(data, train_transform, eval_transform)
    if data in EMBEDDED_DATASETS:
        return DigitsDataset("train", train_transform), DigitsDataset("val", eval_transform)
    root = Path(data).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"data folder not found: {root} (give an ImageNet-style folder or one of {EMBEDDED_DATASETS})"
        )
    _check_folder(root / "train", "train")
    _check_folder(root / "val", "validation")
    try:
        train, val = TolerantImageFolder(root / "train", train_transform), TolerantImageFolder(root / "val", eval_transform)
    except FileNotFoundError as error:  # torchvision's message for class folders without images
        raise ValueError(f"empty data folder under {root}: {error}") from None
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise ValueError(
            f"train and val class sets differ under {root}: only in train {only_train[:10]}, "
            f"only in val {only_val[:10]}"
        )
    return train, val


def build_eval_dataset(data: str, transform: Callable) -> Dataset:
    """The evaluation split of ``data``: ``val/`` of a dataset folder, the folder itself, the digits test split,
    or a task's held-out split."""
    if is_task_spec(data):
        return DigitTaskDataset("val", parse_task(data), transform)
    if data in EMBEDDED_DATASETS:
        return DigitsDataset("val", transform)
    root = Path(data).expanduser()
    folder = root / "val" if (root / "val").is_dir() else root
    _check_folder(folder, "evaluation")
    return TolerantImageFolder(folder, transform)
