"""Classification evaluation (top-1, top-5, loss over a dataset) and prediction (top-k of image files)."""
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..engine import Distributed, ShardSampler, autocast
from ..errors import DataError
from ..images import load_image
from .data import build_eval_dataset, collate_skipping

__all__ = ["TOP_K", "eval_loader", "eval_loader_of", "eval_transform_for", "evaluate_classifier", "predict"]

TOP_K = 5


def eval_transform_for(data_config: dict):
    """Resize by crop_pct, centre crop, interpolation and mean/std of the model's data config."""
    from timm.data import create_transform

    return create_transform(
        data_config["input_size"], is_training=False, interpolation=data_config["interpolation"],
        mean=data_config["mean"], std=data_config["std"], crop_pct=data_config["crop_pct"],
    )


def eval_loader(data: str, data_config: dict, world: Distributed = Distributed(), batch_size: int = 64,
                workers: int = 0, class_names: Optional[Sequence[str]] = None) -> DataLoader:
    """Batches of the evaluation split of ``data`` (see :func:`~boat_vit.classification.data.build_eval_dataset`)
    as the model's data config prepares them; each process takes its shard, every image is used once.

    Raises:
        DataError: ``class_names`` are given and the data set's classes differ.
    """
    dataset = build_eval_dataset(data, eval_transform_for(data_config))
    if class_names is not None and list(getattr(dataset, "classes", class_names)) != list(class_names):
        raise DataError(f"the classes of {data} differ from the model's ({len(class_names)} classes)")
    return eval_loader_of(dataset, world, batch_size, workers)


def eval_loader_of(dataset: Dataset, world: Distributed = Distributed(), batch_size: int = 64,
                   workers: int = 0) -> DataLoader:
    """Batches of ``dataset`` without its unreadable images; each process takes its shard, every image is used
    once. The loader draws its worker seeds from its own generator, never from the global RNG."""
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_skipping,
                      sampler=ShardSampler(len(dataset), world.rank, world.world_size), generator=torch.Generator())


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    loader: DataLoader,
    world: Distributed = Distributed(),
    amp_dtype: Optional[torch.dtype] = None,
    progress: bool = False,
    description: str = "eval",
) -> dict:
    """Loss, top-1 and top-5 (%) over ``loader``; sums are reduced over processes (each sample once)."""
    model.eval()
    device = world.device
    totals = torch.zeros(5, dtype=torch.float64)  # loss, top-1, top-5, count, skipped
    for images, targets, skipped in tqdm(loader, desc=description, disable=not progress, leave=False):
        totals[4] += skipped
        if not len(images):
            continue
        images, targets = images.to(device), targets.to(device)
        with autocast(device, amp_dtype):
            logits = model(images)
        logits = logits.float()
        ranked = logits.topk(min(TOP_K, logits.shape[1]), dim=1).indices
        hits = ranked == targets[:, None]
        totals[0] += float(F.cross_entropy(logits, targets, reduction="sum"))
        totals[1] += float(hits[:, :1].sum())
        totals[2] += float(hits.sum())
        totals[3] += len(targets)
    totals = world.all_reduce_sum(totals)
    count = max(float(totals[3]), 1.0)
    return dict(loss=float(totals[0]) / count, top1=100 * float(totals[1]) / count,
                top5=100 * float(totals[2]) / count, count=int(totals[3]), skipped=int(totals[4]))


@torch.no_grad()
def predict(model: nn.Module, class_names: Sequence[str], data_config: dict, images: Sequence[str],
            top_k: int = TOP_K, amp_dtype: Optional[torch.dtype] = None) -> list[list[tuple[str, float]]]:
    """Top-``k`` (class name, probability) for each image file, with the model on its own device."""
    transform = eval_transform_for(data_config)
    device = next(model.parameters()).device
    results = []
    for path in images:
        pixels = transform(load_image(path))[None].to(device)
        with autocast(device, amp_dtype):
            logits = model(pixels)
        probs = logits.float().softmax(dim=-1)[0]
        values, indices = probs.topk(min(top_k, len(class_names)))
        results.append([(class_names[i], float(p)) for p, i in zip(values, indices)])
    return results
