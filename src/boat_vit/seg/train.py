"""Segmentation training: the segmentation task on the engine's training skeleton, and
:func:`train_segmentation`, which runs a :class:`~boat_vit.seg.recipes.SegTrainConfig`.

UperNet on a BOAT backbone, counted in iterations (the released ADE20K recipe is the ``ade20k_upernet`` preset:
512x512 crops, AdamW 6e-5, weight decay 0.01, poly schedule with 1500 linear warm-up iterations, 160k
iterations, batch 16); the best checkpoint by mIoU.
"""
import dataclasses
import math
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..engine import (
    ITERATIONS,
    Distributed,
    Evaluation,
    RunCheckpoint,
    Schedule,
    StepOutput,
    TrainingData,
    TrainingTask,
    autocast,
    check_finite,
    run_training,
)
from ..errors import Argument, ConfigError, DataError
from ..models import check_model_name, download_pretrained
from ..weights import WeightsReport
from .data import EvalTransform, SegmentationFolder, TrainAugmentation, check_samples, collate_segmentation, dataset_spec
from .evaluate import InferenceOptions, eval_loader, evaluate_segmentation, format_scores
from .model import DEFAULT_AUX_CHANNELS, BoatUPerNet, load_backbone_weights, run_entries
from .recipes import SegTrainConfig

__all__ = ["SegmentationTask", "segmentation_loss", "train_segmentation"]

MIN_IMAGES_PER_PROCESS = 2  # UperNet's pooling branch has 1x1 maps: batch norm needs two images
METRIC_FIELDS = ("iteration", "train_loss", "lr", "miou", "macc", "aacc", "images_per_s")
PLOT_PANELS = (
    ("training loss", (("train_loss", None),)),
    ("validation (%)", (("miou", "mIoU"), ("macc", "mAcc"), ("aacc", "pixel acc."))),
    ("learning rate", (("lr", None),)),
)


def segmentation_loss(logits: torch.Tensor, aux: Optional[torch.Tensor], labels: torch.Tensor,
                      ignore_index: int, aux_weight: float) -> torch.Tensor:
    """Cross-entropy averaged over labelled pixels (0 when none is), plus ``aux_weight`` times that of the
    auxiliary logits upsampled to the label size."""
    labelled = (labels != ignore_index).sum().clamp(min=1)  # a tensor: no device synchronisation

    def cross_entropy(output: torch.Tensor) -> torch.Tensor:
        if output.shape[-2:] != labels.shape[-2:]:
            output = F.interpolate(output, labels.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(output.float(), labels, ignore_index=ignore_index, reduction="sum") / labelled

    loss = cross_entropy(logits)
    if aux is not None and aux_weight:
        loss = loss + aux_weight * cross_entropy(aux)
    return loss


class SegmentationTask(TrainingTask):
    """Semantic segmentation: UperNet (with the released recipe's auxiliary head) on a timm backbone,
    ADE20K-style data with label-aware augmentation, a poly schedule, mIoU; the best checkpoint by mIoU."""

    kind = "segmentation"
    unit = ITERATIONS
    metric_fields = METRIC_FIELDS
    plot_panels = PLOT_PANELS
    sync_batch_norm = True

    def check_batching(self, world: Distributed) -> int:
        config = self.config
        if config.batch_size % world.world_size or config.batch_size // world.world_size < MIN_IMAGES_PER_PROCESS:
            raise ConfigError(Argument("batch_size"), f" {config.batch_size} must be a multiple of the "
                              f"{world.world_size} processes with at least {MIN_IMAGES_PER_PROCESS} images each "
                              "(batch norm in UperNet)")
        return config.batch_size

    def build_data(self, world: Distributed, resumed: Optional[RunCheckpoint]) -> TrainingData:
        from timm.models import get_pretrained_cfg

        config = self.config
        if resumed is not None:
            run_entries(resumed)  # a damaged checkpoint stops the run before the data is read
        check_model_name(config.backbone)
        spec = self.spec = dataset_spec(config.dataset, config.num_classes, config.ignore_index,
                                        config.reduce_zero_label)
        pretrained_cfg = get_pretrained_cfg(config.backbone)
        self.mean, self.std = tuple(pretrained_cfg.mean), tuple(pretrained_cfg.std)
        self.test_scale = tuple(config.test_scale) if config.test_scale else None
        augmentation = TrainAugmentation(
            config.crop_size, self.mean, self.std, scale=config.scale, ratio_range=config.ratio_range,
            cat_max_ratio=config.cat_max_ratio, hflip=config.hflip, photometric=config.photometric,
            ignore_index=spec.ignore_index,
        )
        train_set = SegmentationFolder(Path(config.data), "training", spec, augmentation)
        self.val_loader = eval_loader(config.data, "validation", spec, EvalTransform(self.mean, self.std,
                                                                                     self.test_scale),
                                      world, config.workers)
        for folder in (train_set, self.val_loader.dataset):  # a bad sample stops the run now, not hours later
            check_samples(folder, config.workers)
        self.inference = InferenceOptions(config.eval_mode, tuple(config.crop_size), tuple(config.eval_stride))
        return TrainingData(train_set, collate_segmentation)

    def model_args(self) -> dict:
        config = self.config
        return dict(backbone=config.backbone, num_classes=self.spec.num_classes,
                    backbone_kwargs=config.backbone_kwargs, decoder_channels=config.decoder_channels,
                    aux_channels=DEFAULT_AUX_CHANNELS if config.aux_weight else 0,
                    drop_path_rate=config.drop_path)

    def build_model(self) -> nn.Module:
        self.model = BoatUPerNet(**self.model_args())
        return self.model

    def load_initial_weights(self, model: nn.Module) -> Optional[WeightsReport]:
        config = self.config
        if config.pretrained:  # the backbone's pretrained weights, downloaded as timm's pretrained=True does
            path = str(download_pretrained(config.backbone))
        elif config.backbone_weights:
            path = config.backbone_weights
        else:
            return None
        return load_backbone_weights(model, path, allow_partial=config.partial_weights)

    def build_scheduler(self, optimizer: torch.optim.Optimizer, updates_per_epoch: int) -> tuple[Any, Schedule]:
        from timm.scheduler import PolyLRScheduler

        config = self.config
        scheduler = PolyLRScheduler(
            optimizer, t_initial=config.iterations, power=config.poly_power, lr_min=config.min_lr,
            warmup_t=config.warmup_iters, warmup_lr_init=config.lr * config.warmup_ratio, t_in_epochs=False,
        )
        return scheduler, Schedule(config.iterations, config.eval_interval, config.checkpoint_interval)

    def training_step(self, model: nn.Module, batch: Any, world: Distributed,
                      amp_dtype: Optional[torch.dtype]) -> StepOutput:
        if isinstance(batch, DataError):  # a worker found a bad sample
            raise batch
        images, labels, _ = batch
        images, labels = images.to(world.device, non_blocking=True), labels.to(world.device, non_blocking=True)
        with autocast(world.device, amp_dtype):
            logits, aux = model(images, with_aux=True)
        loss = segmentation_loss(logits, aux, labels, self.spec.ignore_index, self.config.aux_weight)
        return StepOutput(loss, len(images))

    def evaluate(self, model: nn.Module, ema_model: Optional[nn.Module], world: Distributed,
                 amp_dtype: Optional[torch.dtype], progress: bool, step: int) -> Evaluation:
        scores = evaluate_segmentation(model, self.val_loader, self.spec, self.inference, world, amp_dtype,
                                       progress=progress, description=f"eval @{step}")
        if scores.non_finite_pixels:
            check_finite(math.nan, f"segmentation output at iteration {step}", self.config.output)
        row = dict(miou=scores.miou, macc=scores.macc, aacc=scores.aacc)
        line = f"iteration {step}: {format_scores(scores, self.spec.class_names, per_class=False)}"
        return Evaluation(row, scores.miou, dict(miou=scores.miou, iou=scores.iou), line)

    def checkpoint_extras(self) -> dict:
        return dict(spec=dataclasses.asdict(self.spec), data=dict(mean=self.mean, std=self.std,
                                                                  test_scale=self.test_scale),
                    backbone_part=self.model.backbone_part())

    def summary(self, rows: list[dict], best: dict, weights: Optional[WeightsReport]) -> dict:
        config = self.config
        return dict(backbone=config.backbone, data=config.data, iterations=config.iterations,
                    final_miou=rows[-1]["miou"], best_miou=best["miou"], best_iteration=best["step"],
                    best_class_iou=dict(zip(self.spec.class_names, best["iou"])),
                    backbone_weights=dataclasses.asdict(weights) if weights else None)

    def title(self) -> str:
        return f"UperNet + {self.config.backbone}"


def train_segmentation(config: SegTrainConfig, resumed: Optional[RunCheckpoint] = None) -> dict:
    """Trains (or resumes) a segmenter as ``config`` says (:class:`SegmentationTask` on
    :func:`~boat_vit.engine.run_training`).

    Args:
        config: The run's options (:func:`~boat_vit.seg.resolve_seg_config` fills them from the preset).
        resumed: The checkpoint of ``config.resume`` where the caller has read it already.

    Returns:
        The summary written to ``summary.json`` (on the main process; ``{}`` on the others).
    """
    return run_training(SegmentationTask(config), resumed)
