"""Classification data: the embedded handwritten digits, ImageNet-style folders, and distributed sampling."""
import random
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler, default_collate
from torchvision.datasets import ImageFolder

from .tasks import TASK_NAMES, DigitTaskDataset, build_task_datasets, is_task_spec, parse_task

__all__ = [
    "EMBEDDED_DATASETS",
    "DigitsDataset",
    "TolerantImageFolder",
    "GlobalBatchSampler",
    "SeededSamples",
    "ShardSampler",
    "build_datasets",
    "build_eval_dataset",
    "collate_skipping",
]

EMBEDDED_DATASETS = ("digits", *TASK_NAMES)  # the generated tasks also take options: boat_vit.tasks
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
DIGITS_MAX_LEVEL = 16  # the digits are 8x8 images of 17 grey levels (0..16)
UINT8_MAX = 255
_SEED_STRIDE = 1_000_003  # derived seeds: per epoch from the run seed, per sample from the epoch seed


class DigitsDataset(Dataset):
    """scikit-learn's 1,797 real handwritten digits, split reproducibly (stratified) into train and test.

    Items are ``(transform(image), label)`` with the 8x8 image as a PIL RGB image.
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

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index], mode="L").convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]


class TolerantImageFolder(ImageFolder):
    """An ImageFolder whose unreadable (corrupt or truncated) images yield ``None`` instead of raising.

    :func:`collate_skipping` drops them and counts them, so a run reports them instead of crashing.
    """

    def __getitem__(self, index: int):
        try:
            return super().__getitem__(index)
        except (OSError, ValueError):  # PIL raises OSError subclasses for corrupt and truncated files
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
    (:func:`boat_vit.tasks.parse_task`, e.g. ``digit-pairs:canvas=64``) gives its training and held-out splits.
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


class SeededSamples(Dataset):
    """Training view of a dataset whose keys are ``(index, seed)``: each sample is loaded and augmented under
    RNG states set from its own seed, so augmentation does not depend on which process or worker loads it
    (one process and ``torchrun`` give the same images). The caller's RNG states are left untouched.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            try:
                return self.dataset[index]
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)


class GlobalBatchSampler(Sampler[list[tuple[int, int]]]):
    """Shuffled global batches split across ranks: rank ``r`` gets the ``r``-th slice of every global batch.

    With the same seed, one process with batch ``B`` and ``W`` processes with batch ``B / W`` each see the
    same samples at every step. The order depends only on ``seed`` and the epoch (:meth:`set_epoch`).
    Incomplete last global batches are dropped, as training does. Batches hold ``(index, sample_seed)``
    keys for :class:`SeededSamples`.
    """

    def __init__(self, num_samples: int, global_batch: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} must be divisible by the {world_size} processes")
        if num_samples < global_batch:
            raise ValueError(f"{num_samples} training samples are fewer than one batch of {global_batch}")
        self.num_samples, self.global_batch = num_samples, global_batch
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples // self.global_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch_seed = self.seed * _SEED_STRIDE + self.epoch
        order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(epoch_seed)).tolist()
        local = self.global_batch // self.world_size
        for start in range(0, len(self) * self.global_batch, self.global_batch):
            offset = start + self.rank * local
            yield [(index, (epoch_seed * _SEED_STRIDE + index) % 2**63) for index in order[offset : offset + local]]


class ShardSampler(Sampler[int]):
    """Rank ``r`` of ``W`` takes samples ``r, r + W, ...``: every sample is evaluated exactly once."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1):
        self.indices = range(rank, num_samples, world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

