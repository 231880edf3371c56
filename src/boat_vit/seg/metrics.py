"""Segmentation metrics from an accumulated confusion matrix: mIoU, per-class IoU, pixel accuracy."""
import math
from dataclasses import dataclass

import torch

from ..engine import Distributed

__all__ = ["ConfusionMatrix", "SegmentationScores"]


@dataclass
class SegmentationScores:
    """Scores in percent. Classes absent from both ground truth and predictions have NaN IoU and are left
    out of the means (the standard protocol); a class predicted but absent from the ground truth has IoU 0."""

    miou: float  # mean IoU over classes present in ground truth or predictions
    macc: float  # mean per-class accuracy over classes present in the ground truth
    aacc: float  # pixel accuracy over all labelled pixels
    iou: list[float]
    acc: list[float]
    pixels: int  # labelled pixels counted
    non_finite_pixels: int = 0  # pixels whose predicted probabilities were NaN or infinite (a diverged model)


def _nanmean(values: torch.Tensor) -> float:
    kept = values[~values.isnan()]
    return float(kept.mean()) if kept.numel() else math.nan


class ConfusionMatrix:
    """``matrix[t, p]`` counts pixels of ground-truth class ``t`` predicted as ``p``; ``ignore_index``
    pixels are not counted."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Adds predictions and targets of the same shape (class indices)."""
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
        keep = target != self.ignore_index
        index = target[keep].long() * self.num_classes + prediction[keep].long()
        counts = torch.bincount(index.flatten(), minlength=self.num_classes**2)
        self.matrix += counts.reshape(self.num_classes, self.num_classes).cpu()

    def all_reduce(self, world: Distributed) -> None:
        """Sums the matrices of all processes (every process then holds the total)."""
        self.matrix = world.all_reduce_sum(self.matrix.to(torch.float64)).round().to(torch.int64)

    def scores(self) -> SegmentationScores:
        matrix = self.matrix.to(torch.float64)
        hits = matrix.diag()
        truth, predicted = matrix.sum(1), matrix.sum(0)
        union = truth + predicted - hits
        iou = torch.where(union > 0, hits / union.clamp(min=1), torch.nan) * 100
        acc = torch.where(truth > 0, hits / truth.clamp(min=1), torch.nan) * 100
        total = float(matrix.sum())
        return SegmentationScores(
            miou=_nanmean(iou), macc=_nanmean(acc), aacc=100 * float(hits.sum()) / total if total else math.nan,
            iou=iou.tolist(), acc=acc.tolist(), pixels=int(total),
        )
