"""Detection evaluation: box and mask AP with pycocotools' COCOeval, results in COCO's results format.

Each process runs the detector on its shard of the images (one image per forward, so an image's result does
not depend on the batch or the process count); the results are gathered so that every image is scored exactly
once, and COCOeval runs on the whole set. Scores are COCO's twelve-point summary's first six, in percent:
``AP`` (IoU 0.50:0.95), ``AP50``, ``AP75``, and ``APs`` / ``APm`` / ``APl`` (areas below 32², up to 96²,
above), 100 detections per image. A score COCO cannot define (no ground truth in an area range) is NaN.
"""
import contextlib
import io
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..engine import Distributed, ShardSampler, autocast
from .data import CategoryMap, CocoDetection, checked_batches, collate_detection

__all__ = ["IOU_TYPES", "METRICS", "DetectionScores", "coco_scores", "eval_loader", "evaluate_detection",
           "format_scores", "to_coco_results"]

IOU_TYPES = {"bbox": "box", "segm": "mask"}  # COCOeval's name -> ours
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # the first six of COCOeval's stats
MASK_THRESHOLD = 0.5  # mask probability above which a pixel belongs to the instance (torchvision, mmdetection)
DECIMALS = 2  # of box coordinates in results files


@dataclass
class DetectionScores:
    """COCO scores in percent (:data:`METRICS` for ``box`` and, with masks, ``mask``)."""

    box: dict[str, float]
    mask: Optional[dict[str, float]] = None
    images: int = 0
    detections: int = 0
    non_finite: int = 0  # detections with a NaN or infinite box or score (left out; a diverged model)

    @property
    def main(self) -> float:
        """The score a run selects its best checkpoint by: box AP."""
        return self.box["AP"]


def to_coco_results(output: dict[str, torch.Tensor], image_id: int, categories: CategoryMap) -> tuple[list[dict], int]:
    """One image's detector output (torchvision's eval format) as COCO result records, and how many detections
    were left out for non-finite values. Masks (probabilities) are thresholded at 0.5 and RLE-encoded."""
    boxes, scores, labels = output["boxes"].float().cpu(), output["scores"].float().cpu(), output["labels"].cpu()
    finite = torch.isfinite(boxes).all(1) & torch.isfinite(scores)
    masks = None
    if "masks" in output:
        from pycocotools import mask as mask_utils

        binary = (output["masks"][finite, 0] > MASK_THRESHOLD).cpu().numpy().astype(np.uint8)
        masks = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0))) if len(binary) else []
    boxes, scores, labels = boxes[finite], scores[finite], labels[finite]
    widths_heights = boxes[:, 2:] - boxes[:, :2]
    records = []
    for index in range(len(boxes)):
        x, y = boxes[index, :2].tolist()
        w, h = widths_heights[index].tolist()
        record = dict(image_id=int(image_id), category_id=categories.category_id(int(labels[index])),
                      bbox=[round(v, DECIMALS) for v in (x, y, w, h)], score=float(scores[index]))
        if masks is not None:
            rle = masks[index]
            record["segmentation"] = dict(size=list(rle["size"]), counts=rle["counts"].decode("ascii"))
        records.append(record)
    return records, int((~finite).sum())


def coco_scores(ground_truth, results: list[dict], iou_type: str, image_ids: list[int]) -> dict[str, float]:
    """COCOeval's summary (:data:`METRICS`, percent; NaN where undefined) of ``results`` against
    ``ground_truth`` (a pycocotools ``COCO``) over ``image_ids``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and the summary
        if results:
            detections = ground_truth.loadRes([dict(r) for r in results])
        else:  # loadRes cannot take an empty list: no detection at all
            detections = COCO()
            detections.dataset = dict(images=ground_truth.dataset["images"], annotations=[],
                                      categories=ground_truth.dataset["categories"])
            detections.createIndex()
        evaluation = COCOeval(ground_truth, detections, iou_type)
        evaluation.params.imgIds = sorted(image_ids)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = evaluation.stats[:len(METRICS)]
    return {name: (100.0 * float(value) if value >= 0 else math.nan) for name, value in zip(METRICS, stats)}


def eval_loader(dataset: CocoDetection, world: Distributed, workers: int) -> DataLoader:
    """One image per batch; each process takes its shard, every image is used once."""
    return DataLoader(dataset, batch_size=1, sampler=ShardSampler(len(dataset), world.rank, world.world_size),
                      num_workers=workers, collate_fn=collate_detection, generator=torch.Generator())


@torch.no_grad()
def evaluate_detection(
    model: nn.Module,
    dataset: CocoDetection,
    world: Distributed = Distributed(),
    amp_dtype: Optional[torch.dtype] = None,
    workers: int = 0,
    progress: bool = False,
    description: str = "eval",
) -> tuple[DetectionScores, list[dict]]:
    """Box (and, for a detector with masks, mask) AP of ``model`` on ``dataset``, and the COCO results.

    Every process returns the same scores and all results (sorted by image id, then descending score).

    Raises:
        RuntimeError: the gathered results do not cover every image exactly once.
    """
    model.eval()
    loader = eval_loader(dataset, world, workers)
    results: list[dict] = []
    image_ids: list[int] = []
    non_finite = 0
    with_masks = False
    for images, targets in tqdm(checked_batches(loader), total=len(loader), desc=description, disable=not progress,
                                leave=False):
        with autocast(world.device, amp_dtype):
            outputs = model([image.to(world.device) for image in images])
        for output, target in zip(outputs, targets):
            records, dropped = to_coco_results(output, target["image_id"], dataset.categories)
            with_masks = with_masks or "masks" in output
            results += records
            image_ids.append(target["image_id"])
            non_finite += dropped
    gathered = world.all_gather_objects((results, image_ids, non_finite, with_masks))
    results = sorted((r for part in gathered for r in part[0]), key=lambda r: (r["image_id"], -r["score"]))
    image_ids = [i for part in gathered for i in part[1]]
    expected = sorted(record.image_id for record in dataset.records)
    if sorted(image_ids) != expected:
        raise RuntimeError(f"evaluation scored {len(image_ids)} images ({len(set(image_ids))} distinct) of "
                           f"{len(expected)}")
    with_masks = any(part[3] for part in gathered)
    box = coco_scores(dataset.coco, results, "bbox", image_ids)
    mask = coco_scores(dataset.coco, results, "segm", image_ids) if with_masks else None
    scores = DetectionScores(box=box, mask=mask, images=len(image_ids), detections=len(results),
                             non_finite=sum(part[2] for part in gathered))
    return scores, results


def format_scores(scores: DetectionScores) -> str:
    """Box (and mask) AP lines as COCO's summary names them, in percent."""
    lines = [f"{scores.images} images, {scores.detections} detections"
             + (f" ({scores.non_finite} non-finite left out)" if scores.non_finite else "")]
    for name, values in (("box", scores.box), ("mask", scores.mask)):
        if values is not None:
            lines.append(f"{name:<4}  " + "  ".join(f"{metric} {'n/a' if math.isnan(value) else f'{value:.2f}'}"
                                                     for metric, value in values.items()))
    return "\n".join(lines)
