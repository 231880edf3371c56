"""Segmentation evaluation (mIoU over a data set) and prediction (label maps and overlays of image files)."""
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..engine import Distributed, ShardSampler, autocast
from ..images import load_image, palette
from .data import DatasetSpec, EvalTransform, SegmentationFolder, checked_batches, collate_segmentation
from .inference import segment
from .metrics import ConfusionMatrix, SegmentationScores
from .model import PALETTE_SIZE, Segmenter

__all__ = ["InferenceOptions", "eval_loader", "evaluate_segmentation", "format_scores", "predict_images"]

OVERLAY_ALPHA = 0.5


@dataclass(frozen=True)
class InferenceOptions:
    """How to run a segmenter on a whole image: mode, windows, scales and flip (see :func:`segment`)."""

    mode: str = "whole"
    crop: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (341, 341)
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False

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

    Predictions are resized to each label's size; the confusion matrix is summed over processes.
    """
    model.eval()
    confusion = ConfusionMatrix(spec.num_classes, spec.ignore_index)
    for images, labels, _ in tqdm(checked_batches(loader), total=len(loader), desc=description,
                                  disable=not progress, leave=False):
        with autocast(world.device, amp_dtype):
            probabilities = inference(model, images.to(world.device), spec.num_classes, labels.shape[-2:])
        confusion.update(probabilities.argmax(1).cpu(), labels)
    confusion.all_reduce(world)
    return confusion.scores()


def eval_loader(data: str, split: str, segmenter_spec: DatasetSpec, transform: EvalTransform, world: Distributed,
                workers: int) -> DataLoader:
    """One image per batch (sizes differ); each process takes its shard, every image is used once."""
    dataset = SegmentationFolder(Path(data), split, segmenter_spec, transform)
    return DataLoader(dataset, batch_size=1, sampler=ShardSampler(len(dataset), world.rank, world.world_size),
                      num_workers=workers, collate_fn=collate_segmentation)


def format_scores(scores: SegmentationScores, class_names: Sequence[str], per_class: bool = True) -> str:
    lines = [f"mIoU {scores.miou:.2f}  mAcc {scores.macc:.2f}  aAcc {scores.aacc:.2f}  ({scores.pixels} pixels)"]
    if per_class:
        width = max(len(name) for name in class_names)
        lines.append(f"{'class':<{width}}    IoU    Acc")
        lines += [f"{name:<{width}}  {iou:5.2f}  {acc:5.2f}"
                  for name, iou, acc in zip(class_names, scores.iou, scores.acc)]
    return "\n".join(lines)


@torch.no_grad()
def predict_images(segmenter: Segmenter, images: Sequence[str], output: Path,
                   inference: InferenceOptions = InferenceOptions(),
                   amp_dtype: Optional[torch.dtype] = None) -> list[tuple[Path, Path]]:
    """Writes ``NAME_labels.png`` (label map with a colour palette, in the data set's label convention) and
    ``NAME_overlay.png`` (image blended with the colours) for each image; returns their paths."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    colours = segmenter.colour_table()
    shift = int(segmenter.spec.reduce_zero_label)
    device = next(segmenter.model.parameters()).device
    written = []
    for path in map(Path, images):
        image = load_image(path)
        pixels = segmenter.transform.image(image)[None].to(device)
        with autocast(device, amp_dtype):
            probabilities = inference(segmenter.model, pixels, segmenter.spec.num_classes, (image.height, image.width))
        labels = probabilities.argmax(1)[0].cpu().numpy().astype(np.int64) + shift
        label_path, overlay_path = output / f"{path.stem}_labels.png", output / f"{path.stem}_overlay.png"
        if segmenter.spec.num_classes + shift <= PALETTE_SIZE:
            label_image = Image.fromarray(labels.astype(np.uint8), mode="P")
            label_image.putpalette(colours.flatten().tolist())
        else:  # more classes than a palette holds: colours only
            label_image = Image.fromarray(palette(segmenter.spec.num_classes)[labels - shift])
        label_image.save(label_path)
        Image.blend(image, label_image.convert("RGB"), OVERLAY_ALPHA).save(overlay_path)
        written.append((label_path, overlay_path))
    return written
