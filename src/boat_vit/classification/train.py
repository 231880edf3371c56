"""Classification training: the classification task on the engine's training skeleton, and
:func:`train_classifier`, which runs a :class:`~boat_vit.classification.recipes.TrainConfig`."""
from typing import Any, Optional

import torch
import torch.nn as nn

from ..engine import (
    EPOCHS,
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
from ..models import check_model_name, create_model, download_pretrained, weights_filter
from ..weights import WeightsReport, load_weights
from .data import build_datasets, collate_skipping
from .evaluate import eval_loader_of, eval_transform_for, evaluate_classifier
from .model import run_entries
from .recipes import TrainConfig

__all__ = ["ClassificationTask", "train_classifier"]

METRIC_FIELDS = ("epoch", "train_loss", "lr", "val_loss", "top1", "top5", "ema_top1", "ema_top5",
                 "images_per_s", "skipped_images")
PLOT_PANELS = (
    ("loss", (("train_loss", "train"), ("val_loss", "validation"))),
    ("validation accuracy (%)", (("top1", "top-1"), ("top5", "top-5"), ("ema_top1", "EMA top-1"))),
    ("learning rate (end of epoch)", (("lr", None),)),
)


def _transforms(config: TrainConfig):
    from timm.data import create_transform, resolve_data_config
    from timm.layers import to_2tuple
    from timm.models import get_pretrained_cfg

    size = config.img_size or config.model_kwargs.get("img_size")  # a model built for a size takes that size
    overrides = dict(input_size=(3, *to_2tuple(size))) if size else {}
    data_config = resolve_data_config(overrides, pretrained_cfg=get_pretrained_cfg(config.model).to_dict())
    if config.crop_pct is not None:
        data_config["crop_pct"] = config.crop_pct
    try:
        train_transform = create_transform(
            data_config["input_size"], is_training=True, scale=tuple(config.scale), hflip=config.hflip,
            color_jitter=config.color_jitter, auto_augment=config.auto_augment, interpolation="bicubic",
            mean=data_config["mean"], std=data_config["std"], re_prob=config.reprob,
        )
    except (AssertionError, KeyError, ValueError, IndexError):  # timm asserts on a policy it cannot parse
        raise ConfigError(Argument("auto_augment"), f" {config.auto_augment!r} is not a timm augmentation policy "
                          "(e.g. rand-m9-mstd0.5-inc1, augmix-m5-w3, original, v0, 3a)") from None
    return train_transform, eval_transform_for(data_config), data_config


def _criterion(config: TrainConfig, num_classes: int):
    """Mixup/CutMix (or ``None``) and the loss that goes with it."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if config.mixup > 0 or config.cutmix > 0:
        mixup = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, label_smoothing=config.label_smoothing,
                      num_classes=num_classes)
        return mixup, SoftTargetCrossEntropy()
    if config.label_smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=config.label_smoothing)
    return None, nn.CrossEntropyLoss()


class ClassificationTask(TrainingTask):
    """Image classification: timm models, timm's data pipeline, Mixup/CutMix, label smoothing, AdamW with a
    cosine schedule stepped per update, top-1/top-5, an optional EMA; the best checkpoint by top-1 (model or
    EMA, whichever is higher)."""

    kind = "classification"
    unit = EPOCHS
    metric_fields = METRIC_FIELDS
    plot_panels = PLOT_PANELS

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        self.accum_steps = config.accum_steps
        self.ema_decay = config.ema_decay
        self.class_names: list[str] = []
        self.data_config: dict = {}
        self.micro_batch = self.total_epochs = 0

    def check_batching(self, world: Distributed) -> int:
        config = self.config
        per_step = world.world_size * config.accum_steps
        if config.batch_size % per_step:
            raise ConfigError(Argument("batch_size"), f" {config.batch_size} must be divisible by processes x "
                              f"accumulation steps ({per_step})")
        self.micro_batch = config.batch_size // config.accum_steps  # images per micro-step over all processes
        return self.micro_batch

    def build_data(self, world: Distributed, resumed: Optional[RunCheckpoint]) -> TrainingData:
        config = self.config
        resumed_classes = run_entries(resumed)[0] if resumed is not None else None  # a damaged file stops it now
        check_model_name(config.model)
        train_transform, eval_transform, self.data_config = _transforms(config)
        train_set, val_set = build_datasets(config.data, train_transform, eval_transform)
        self.class_names = list(train_set.classes)
        if resumed_classes is not None and resumed_classes != self.class_names:
            raise DataError(f"the classes of {config.data} ({len(self.class_names)}) differ from those of the "
                            f"resumed run ({len(resumed_classes)})")
        self.val_loader = eval_loader_of(val_set, world, max(1, self.micro_batch // world.world_size), config.workers)
        self.mixup, self.criterion = _criterion(config, len(self.class_names))
        return TrainingData(train_set, collate_skipping)

    def model_args(self) -> dict:
        config = self.config
        kwargs = {"img_size": config.img_size, **config.model_kwargs}  # explicit model arguments first
        return dict(name=config.model, num_classes=len(self.class_names),
                    kwargs={k: v for k, v in kwargs.items() if v is not None})

    def build_model(self) -> nn.Module:
        args = self.model_args()
        model = create_model(args["name"], num_classes=args["num_classes"], drop_path_rate=self.config.drop_path,
                             **args["kwargs"])
        if self.config.grad_checkpointing:
            model.set_grad_checkpointing(True)
        return model

    def load_initial_weights(self, model: nn.Module) -> Optional[WeightsReport]:
        config = self.config
        if config.pretrained:  # the model's pretrained weights, as timm's pretrained=True: a new classifier
            path, reset_head = str(download_pretrained(config.model)), True
        elif config.pretrained_file is not None:
            path, reset_head = config.pretrained_file, config.reset_head
        else:
            return None
        return load_weights(model, path, weights_filter(model), reset_head=reset_head,
                            allow_partial=config.partial_weights)

    def build_scheduler(self, optimizer: torch.optim.Optimizer, updates_per_epoch: int) -> tuple[Any, Schedule]:
        from timm.scheduler import create_scheduler_v2

        config = self.config
        scheduler, self.total_epochs = create_scheduler_v2(
            optimizer, "cosine", num_epochs=config.epochs, warmup_epochs=config.warmup_epochs,
            cooldown_epochs=config.cooldown_epochs, min_lr=config.min_lr, warmup_lr=config.warmup_lr,
            step_on_epochs=False, updates_per_epoch=updates_per_epoch,
        )
        return scheduler, Schedule(total=self.total_epochs)

    def training_step(self, model: nn.Module, batch: Any, world: Distributed,
                      amp_dtype: Optional[torch.dtype]) -> StepOutput:
        images, targets, skipped = batch
        if self.mixup is not None and len(images) % 2:  # mixup pairs images: drop one when a skip made it odd
            images, targets = images[:-1], targets[:-1]
        images, targets = images.to(world.device, non_blocking=True), targets.to(world.device, non_blocking=True)
        if self.mixup is not None and len(images):
            images, targets = self.mixup(images, targets)
        with autocast(world.device, amp_dtype):
            loss = self.criterion(model(images), targets) if len(images) else images.new_zeros(())
        return StepOutput(loss, len(images), skipped)

    def evaluate(self, model: nn.Module, ema_model: Optional[nn.Module], world: Distributed,
                 amp_dtype: Optional[torch.dtype], progress: bool, step: int) -> Evaluation:
        output, label = self.config.output, f"eval {step + 1}/{self.total_epochs}"
        metrics = evaluate_classifier(model, self.val_loader, world, amp_dtype, progress=progress, description=label)
        ema = evaluate_classifier(ema_model, self.val_loader, world, amp_dtype) if ema_model is not None else None
        check_finite(metrics["loss"], f"validation loss at epoch {step + 1}", output)
        if ema is not None:
            check_finite(ema["loss"], f"EMA validation loss at epoch {step + 1}", output)
        row = dict(val_loss=metrics["loss"], top1=metrics["top1"], top5=metrics["top5"],
                   ema_top1=ema["top1"] if ema else None, ema_top5=ema["top5"] if ema else None,
                   skipped_images=metrics["skipped"])
        score = max(row["top1"], row["ema_top1"] or -1.0)
        best = dict(top1=score, top5=row["top5"] if score == row["top1"] else row["ema_top5"])
        return Evaluation(row, score, best)

    def checkpoint_extras(self) -> dict:
        return dict(class_names=self.class_names, data_config=self.data_config)

    def summary(self, rows: list[dict], best: dict, weights: Optional[WeightsReport]) -> dict:
        config = self.config
        return dict(model=config.model, data=config.data, epochs=self.total_epochs,
                    final_top1=rows[-1]["top1"], final_top5=rows[-1]["top5"], best_top1=best["top1"],
                    best_top5=best["top5"], best_epoch=best["step"],
                    skipped_images=sum(row["skipped_images"] for row in rows))

    def title(self) -> str:
        return f"{self.config.model} on {self.config.data}"


def train_classifier(config: TrainConfig, resumed: Optional[RunCheckpoint] = None) -> dict:
    """Trains (or resumes) a classifier as ``config`` says (:class:`ClassificationTask` on
    :func:`~boat_vit.engine.run_training`).

    Args:
        config: The run's options (:func:`~boat_vit.classification.resolve_config` fills them from a preset).
        resumed: The checkpoint of ``config.resume`` where the caller has read it already.

    Returns:
        The summary written to ``summary.json`` (on the main process; ``{}`` on the others).
    """
    return run_training(ClassificationTask(config), resumed)
