"""Segmentation evaluation (mIoU over a data set) and prediction (label maps and overlays of image files)."""
import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..engine import Distributed, ShardSampler, autocast
from ..errors import Argument, ConfigError, OutputError
from ..files import PathLike, atomic_write, check_output
from ..images import distinct_stems, load_image, palette
from .data import DatasetSpec, EvalTransform, SegmentationFolder, checked_batches, collate_segmentation
from .inference import segment
from .metrics import ConfusionMatrix, SegmentationScores
from .model import PALETTE_SIZE, Segmenter

__all__ = ["InferenceOptions", "eval_loader", "evaluate_segmentation", "format_scores", "output_paths",
           "predict_images"]

OVERLAY_ALPHA = 0.5
LABELS_SUFFIX, OVERLAY_SUFFIX = "_labels.png", "_overlay.png"  # of the files seg-predict writes per image
INFERENCE_MODES = ("whole", "slide")


@dataclass(frozen=True)
class InferenceOptions:
    """How to run a segmenter on a whole image: mode, windows, scales and flip (see :func:`segment`)."""

    mode: str = "whole"
    crop: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (341, 341)
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False

    def __post_init__(self):
        if self.mode not in INFERENCE_MODES:
            raise ConfigError(Argument("mode"), f" must be one of {INFERENCE_MODES}, got {self.mode!r}")
        if self.mode == "slide" and any(not 1 <= step <= size for step, size in zip(self.stride, self.crop)):
            raise ConfigError(Argument("stride"), f" {list(self.stride)} must be between 1 and ", Argument("crop"),
                              f" {list(self.crop)}")
        if not self.scales or any(not scale > 0 for scale in self.scales):
            raise ConfigError(Argument("scales"), f" must be positive, got {list(self.scales)}")

    def __call__(self, model: nn.Module, images: torch.Tensor, num_classes: int, out_size: Sequence[int]):
        return segment(model, images, num_classes, out_size, self.mode, self.crop, self.stride, self.scales, self.flip)


@torch.no_grad()
def evaluate_segmentation(
    model: nn.Module,
    loader: DataLoader,
    spec: DatasetSpec,
    inference: InferenceOptions = InferenceOptions(),
    world: Distributed = Distributed(),
    amp_dtype: Optional[torch.dtype] = None,
    progress: bool = False,
    description: str = "eval",
) -> SegmentationScores:
    """mIoU, per-class IoU and accuracies over ``loader`` (items: test-scale image, original label).

    Predictions are resized to each label's size; the confusion matrix is summed over processes. Pixels whose
    probabilities are not finite are counted (``non_finite_pixels``).
    """
    model.eval()
    confusion = ConfusionMatrix(spec.num_classes, spec.ignore_index)
    non_finite = torch.zeros(1, dtype=torch.float64)
    for images, labels, _ in tqdm(checked_batches(loader), total=len(loader), desc=description,
                                  disable=not progress, leave=False):
        with autocast(world.device, amp_dtype):
            probabilities = inference(model, images.to(world.device), spec.num_classes, labels.shape[-2:])
        confusion.update(probabilities.argmax(1).cpu(), labels)
        non_finite += (~torch.isfinite(probabilities)).any(1).sum().item()
    confusion.all_reduce(world)
    return dataclasses.replace(confusion.scores(), non_finite_pixels=int(world.all_reduce_sum(non_finite)))


def eval_loader(data: str, split: str, segmenter_spec: DatasetSpec, transform: EvalTransform, world: Distributed,
                workers: int) -> DataLoader:
    """One image per batch (sizes differ); each process takes its shard, every image is used once."""
    dataset = SegmentationFolder(Path(data), split, segmenter_spec, transform)
    return DataLoader(dataset, batch_size=1, sampler=ShardSampler(len(dataset), world.rank, world.world_size),
                      num_workers=workers, collate_fn=collate_segmentation, generator=torch.Generator())


def format_scores(scores: SegmentationScores, class_names: Sequence[str], per_class: bool = True) -> str:
    lines = [f"mIoU {scores.miou:.2f}  mAcc {scores.macc:.2f}  aAcc {scores.aacc:.2f}  ({scores.pixels} pixels)"]
    if per_class:
        width = max(len(name) for name in class_names)
        lines.append(f"{'class':<{width}}    IoU    Acc")
        lines += [f"{name:<{width}}  {iou:5.2f}  {acc:5.2f}"
                  for name, iou, acc in zip(class_names, scores.iou, scores.acc)]
    return "\n".join(lines)


def output_paths(images: Sequence[PathLike], output: PathLike) -> list[tuple[Path, Path]]:
    """The label map and overlay file of each image in the folder ``output`` (see :func:`~boat_vit.images.distinct_stems`)."""
    return [(Path(output) / f"{stem}{LABELS_SUFFIX}", Path(output) / f"{stem}{OVERLAY_SUFFIX}")
            for stem in distinct_stems(images)]


@torch.no_grad()
def predict_images(segmenter: Segmenter, images: Sequence[PathLike], output: PathLike,
                   inference: InferenceOptions = InferenceOptions(),
                   amp_dtype: Optional[torch.dtype] = None, overwrite: bool = False) -> list[tuple[Path, Path]]:
    """Writes ``NAME_labels.png`` (label map with a colour palette, in the data set's label convention) and
    ``NAME_overlay.png`` (image blended with the colours) for each image into the folder ``output`` (created
    if missing); returns their paths.

    ``NAME`` is the image's file name without suffix, made distinct where two images share it
    (:func:`~boat_vit.images.distinct_stems`), so no output replaces another. Before any prediction every image must exist and
    every output may be written: an existing one is kept unless ``overwrite``. Each file is written
    atomically (a planted link is replaced, never followed).

    Raises:
        FileNotFoundError: an image does not exist.
        ConfigError: the same image is given twice.
        OutputError, OutputExistsError: ``output`` is a file, or an output cannot be written or exists.
    """
    missing = [str(image) for image in images if not Path(image).is_file()]
    if missing:
        raise FileNotFoundError(f"image not found: {', '.join(missing)}")
    targets = output_paths(images, output)
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise OutputError(Argument("output", str(output)), " is a file, not a folder")
    output.mkdir(parents=True, exist_ok=True)
    for target in (path for pair in targets for path in pair):
        check_output(target, overwrite)
    colours = segmenter.colour_table()
    shift = int(segmenter.spec.reduce_zero_label)
    device = next(segmenter.model.parameters()).device
    for path, (label_path, overlay_path) in zip(map(Path, images), targets):
        image = load_image(path)
        pixels = segmenter.transform.image(image)[None].to(device)
        with autocast(device, amp_dtype):
            probabilities = inference(segmenter.model, pixels, segmenter.spec.num_classes, (image.height, image.width))
        labels = probabilities.argmax(1)[0].cpu().numpy().astype(np.int64) + shift
        if segmenter.spec.num_classes + shift <= PALETTE_SIZE:
            label_image = Image.fromarray(labels.astype(np.uint8), mode="P")
            label_image.putpalette(colours.flatten().tolist())
        else:  # more classes than a palette holds: colours only
            label_image = Image.fromarray(palette(segmenter.spec.num_classes)[labels - shift])
        overlay = Image.blend(image, label_image.convert("RGB"), OVERLAY_ALPHA)
        for picture, target in ((label_image, label_path), (overlay, overlay_path)):
            atomic_write(target, partial(picture.save, format="PNG"))
    return targets
