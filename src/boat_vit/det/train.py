"""Detection training: the detection task on the engine's training skeleton, and :func:`train_detector`, which
runs a :class:`~boat_vit.det.recipes.DetTrainConfig`.

Mask R-CNN (or Faster R-CNN) on a timm backbone, counted in iterations; the recipes give epochs, which become
iterations of the data set at hand (``epochs x images // batch``). The learning rate warms up linearly over
``warmup_iters`` from ``lr x warmup_ratio`` and is multiplied by ``lr_decay`` after each epoch of
``lr_steps``; AdamW without weight decay on norms, biases and the backbone's exempt tables (relative position
biases). Evaluation (COCO box and mask AP on the validation split) every ``eval_interval`` iterations (default:
every epoch) and at the end; the best checkpoint by box AP.
"""
import dataclasses
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

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
from ..weights import WeightsReport
from .data import CocoDetection, TrainTransform, check_images, collate_detection, resolve_coco_split
from .evaluate import METRICS, evaluate_detection, format_scores
from .model import build_detector, load_backbone_weights
from .recipes import DetTrainConfig
from .tasks import is_digit_det, prepare_digit_det

__all__ = ["DetectionTask", "data_root", "train_detector"]

SCORE_KINDS = ("box", "mask")
METRIC_FIELDS = ("iteration", "train_loss", "lr",
                 *(f"{kind}_{metric.lower()}" for kind in SCORE_KINDS for metric in METRICS), "images_per_s")
PLOT_PANELS = (
    ("training loss", (("train_loss", None),)),
    ("box AP (%)", (("box_ap", "AP"), ("box_ap50", "AP50"), ("box_ap75", "AP75"))),
    ("mask AP (%)", (("mask_ap", "AP"), ("mask_ap50", "AP50"), ("mask_ap75", "AP75"))),
    ("learning rate", (("lr", None),)),
)


def data_root(data: str, world: Distributed = Distributed()) -> Path:
    """The COCO folder of ``data``: the folder itself, or the generated task it names (written by the main
    process first, see :func:`~boat_vit.det.tasks.prepare_digit_det`)."""
    if not is_digit_det(data):
        return Path(data)
    if world.is_main:
        prepare_digit_det(data)
    world.barrier()
    return prepare_digit_det(data)


def _to_device(target: dict, device: torch.device) -> dict:
    return {key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
            for key, value in target.items()}


class DetectionTask(TrainingTask):
    """Object detection and instance segmentation: a torchvision R-CNN with an FPN on a timm backbone,
    COCO-format data, step decay, COCO box and mask AP; the best checkpoint by box AP."""

    kind = "detection"
    unit = ITERATIONS
    metric_fields = METRIC_FIELDS
    plot_panels = PLOT_PANELS
    sync_batch_norm = True

    config: DetTrainConfig

    def check_batching(self, world: Distributed) -> int:
        config = self.config
        if config.batch_size % world.world_size:
            raise ConfigError(Argument("batch_size"), f" {config.batch_size} must be a multiple of the "
                              f"{world.world_size} processes")
        return config.batch_size

    def build_data(self, world: Distributed, resumed: Optional[RunCheckpoint]) -> TrainingData:
        config = self.config
        self.root = data_root(config.data, world)
        masks = config.kind == "mask_rcnn"
        transform = TrainTransform(config.train_scales, config.max_size, config.hflip)
        self.train_set = CocoDetection(resolve_coco_split(self.root, config.train_split), transform, masks=masks,
                                       keep_empty=config.keep_empty, on_bad=config.on_bad)
        categories = self.train_set.categories
        self.val_set = CocoDetection(resolve_coco_split(self.root, config.val_split), masks=masks, on_bad=config.on_bad,
                                     categories=categories)
        if resumed is not None:
            saved = resumed.entry("categories")
            if (tuple(saved["ids"]), tuple(saved["names"])) != (categories.ids, categories.names):
                raise DataError(f"{self.train_set.split.annotations} has categories {list(categories.names)}, the "
                                f"run {resumed.path} was trained on {list(saved['names'])}")
        for dataset in (self.train_set, self.val_set):  # an unreadable image stops the run now, not hours later
            check_images(dataset, config.workers)
            if world.is_main:
                print(dataset.report.summary())
        return TrainingData(self.train_set, collate_detection)

    def model_args(self) -> dict:
        config = self.config
        return dict(backbone=config.backbone, num_classes=len(self.train_set.categories), kind=config.kind,
                    min_size=config.test_scale, max_size=config.max_size, fpn_channels=config.fpn_channels,
                    box_head_channels=config.box_head_channels, mask_head_channels=config.mask_head_channels,
                    roi_samples_per_image=config.roi_samples, drop_path_rate=config.drop_path,
                    detections_per_image=config.detections_per_image, backbone_kwargs=dict(config.backbone_kwargs))

    def build_model(self) -> nn.Module:
        self.model = build_detector(self.model_args())
        return self.model

    def load_initial_weights(self, model: nn.Module) -> Optional[WeightsReport]:
        config = self.config
        if not config.backbone_weights:
            return None
        return load_backbone_weights(model, config.backbone_weights, allow_partial=config.partial_weights)

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        exempt = {f"backbone.body.{name}" for name in model.backbone.no_weight_decay_names}
        decay, no_decay = [], []
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                (no_decay if parameter.ndim <= 1 or name in exempt else decay).append(parameter)
        groups = [dict(params=decay, weight_decay=self.config.weight_decay), dict(params=no_decay, weight_decay=0.0)]
        return torch.optim.AdamW(groups, lr=self.config.lr)

    def build_scheduler(self, optimizer: torch.optim.Optimizer, updates_per_epoch: int) -> tuple[Any, Schedule]:
        from timm.scheduler import MultiStepLRScheduler

        config = self.config
        # timm applies milestone m from update count m - 1 on: +1 makes the decayed rate start with epoch `step`
        milestones = [step * updates_per_epoch + 1 for step in config.lr_steps]
        scheduler = MultiStepLRScheduler(
            optimizer, decay_t=milestones, decay_rate=config.lr_decay, warmup_t=config.warmup_iters,
            warmup_lr_init=config.lr * config.warmup_ratio, warmup_prefix=False, t_in_epochs=False,
        )
        eval_interval = config.eval_interval or updates_per_epoch
        return scheduler, Schedule(config.epochs * updates_per_epoch, eval_interval,
                                   config.checkpoint_interval or eval_interval)

    def training_step(self, model: nn.Module, batch: Any, world: Distributed,
                      amp_dtype: Optional[torch.dtype]) -> StepOutput:
        if isinstance(batch, DataError):  # a worker found a bad sample
            raise batch
        images, targets = batch
        images = [image.to(world.device, non_blocking=True) for image in images]
        targets = [_to_device(target, world.device) for target in targets]
        with autocast(world.device, amp_dtype):
            losses = model(images, targets)
        return StepOutput(sum(loss.float() for loss in losses.values()), len(images))

    def evaluate(self, model: nn.Module, ema_model: Optional[nn.Module], world: Distributed,
                 amp_dtype: Optional[torch.dtype], progress: bool, step: int) -> Evaluation:
        label = f"eval @{step}"
        scores, _ = evaluate_detection(model, self.val_set, world, amp_dtype, self.config.workers, progress, label)
        if scores.non_finite:
            check_finite(float("nan"), f"detections at {label} ({scores.non_finite} with NaN or infinite values)",
                         self.config.output)
        row = {f"{kind}_{metric.lower()}": value for kind in SCORE_KINDS
               for metric, value in (getattr(scores, kind) or {}).items()}
        line = f"{label}: " + format_scores(scores).replace("\n", " | ")
        return Evaluation(row, scores.main, dict(box=scores.box, mask=scores.mask), line)

    def checkpoint_extras(self) -> dict:
        categories = self.train_set.categories
        return dict(categories=dict(ids=list(categories.ids), names=list(categories.names)),
                    data=dict(root=str(self.root), train=str(self.train_set.split.annotations),
                              val=str(self.val_set.split.annotations)),
                    backbone_part=self.model.backbone.backbone_part())

    def summary(self, rows: list[dict], best: dict, weights: Optional[WeightsReport]) -> dict:
        config = self.config
        return dict(backbone=config.backbone, kind=config.kind, data=str(self.root), iterations=rows[-1]["iteration"],
                    final_box_ap=rows[-1]["box_ap"], final_mask_ap=rows[-1].get("mask_ap"),
                    best_box_ap=best["box"]["AP"], best_iteration=best["step"], best=dict(box=best["box"], mask=best["mask"]),
                    annotations=dict(train=self.train_set.report.as_dict(), val=self.val_set.report.as_dict()),
                    backbone_weights=dataclasses.asdict(weights) if weights else None)

    def title(self) -> str:
        return f"{self.config.kind.replace('_', ' ')} + {self.config.backbone}"


def train_detector(config: DetTrainConfig, resumed: Optional[RunCheckpoint] = None) -> dict:
    """Trains (or resumes) a detector as ``config`` says (:class:`DetectionTask` on
    :func:`~boat_vit.engine.run_training`).

    Args:
        config: The run's options (:func:`~boat_vit.det.recipes.resolve_det_config` fills them from the preset).
        resumed: The checkpoint of ``config.resume`` where the caller has read it already.

    Returns:
        The summary written to ``summary.json`` (on the main process; ``{}`` on the others).
    """
    return run_training(DetectionTask(config), resumed)
