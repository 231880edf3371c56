"""Classification training: :func:`train_classifier` takes a :class:`TrainConfig` (``boat-vit train`` only fills it).

Runs scale from one CPU process to ``torchrun --nproc_per_node N`` (DistributedDataParallel). Every epoch
writes an atomic checkpoint and a metrics row, and ``--resume`` continues a run exactly: every epoch
starts from RNG states derived from the seed and the epoch, so a resumed run repeats the interrupted
epoch bit for bit.
"""
import dataclasses
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..engine import (
    AT_LEAST_ONE,
    NOT_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    RUN_OPTION_BOUNDS,
    Bounds,
    Distributed,
    GlobalBatchSampler,
    RunDirectory,
    RunOptions,
    SeededSamples,
    ShardSampler,
    amp_dtype_for,
    autocast,
    check_bounds,
    check_finite,
    checkpoint_to_resume,
    derive_seed,
    optimizer_step,
    raise_if_non_finite,
    resumed_config,
    rng_state,
    seed_everything,
    set_threads,
    setup_distributed,
)
from ..models import check_architecture_arguments, check_model_name
from .data import build_datasets, collate_skipping
from .evaluate import eval_transform_for, evaluate_classifier
from .model import create_classifier

__all__ = ["PRESETS", "TrainConfig", "resolve_config", "train_classifier"]

DIGITS_IMG_SIZE = 32
DEFAULT_DROP_PATH = 0.1  # for models without a released rate
METRIC_FIELDS = ("epoch", "train_loss", "lr", "val_loss", "top1", "top5", "ema_top1", "ema_top5",
                 "images_per_s", "skipped_images")
PLOT_PANELS = (
    ("loss", (("train_loss", "train"), ("val_loss", "validation"))),
    ("validation accuracy (%)", (("top1", "top-1"), ("top5", "top-5"), ("ema_top1", "EMA top-1"))),
    ("learning rate (end of epoch)", (("lr", None),)),
)

# Drop-path rates of the released recipes per model size (BRIEF section 2).
_DROP_PATH = {
    "boat_swin": {"tiny": 0.2, "small": 0.3, "base": 0.5},
    "boat_cswin": {"tiny": 0.2, "small": 0.4, "base": 0.5},
}

PRESETS: dict[str, dict[str, Any]] = {
    # The embedded default: a small BOAT-Swin on the 8x8 handwritten digits, upscaled to 32x32.
    "digits": dict(
        model="boat_swin_tiny_patch4_window7_224",
        model_kwargs=dict(img_size=DIGITS_IMG_SIZE, patch_size=2, window_size=4, embed_dim=48,
                          depths=(2, 2, 2), num_heads=(2, 4, 8)),
        img_size=DIGITS_IMG_SIZE, epochs=40, batch_size=64, lr=2e-3, weight_decay=0.05, warmup_epochs=3,
        min_lr=1e-5, clip_grad=5.0, label_smoothing=0.1, drop_path=0.1, hflip=0.0, scale=(0.7, 1.0),
        color_jitter=None, auto_augment=None, reprob=0.0, mixup=0.0, cutmix=0.0, crop_pct=1.0,
        workers=0,  # the images are in memory: 0.3 ms of augmentation each, cheaper than worker processes
    ),
    # BOAT-Swin on ImageNet-1K (released recipe): lr 5e-4 per 512 images.
    "boat_swin": dict(
        epochs=300, batch_size=1024, base_lr=5e-4, lr_base_batch=512, weight_decay=0.05, warmup_epochs=20,
        warmup_lr=5e-7, min_lr=5e-6, clip_grad=5.0, label_smoothing=0.1, auto_augment="rand-m9-mstd0.5-inc1",
        reprob=0.25, mixup=0.8, cutmix=1.0, color_jitter=0.4, ema_decay=None,
    ),
    # BOAT-CSWin on ImageNet-1K (released recipe): lr 2e-3 per 2048 images, EMA, 10 cool-down epochs.
    "boat_cswin": dict(
        epochs=300, cooldown_epochs=10, batch_size=2048, base_lr=2e-3, lr_base_batch=2048, weight_decay=0.05,
        warmup_epochs=20, warmup_lr=1e-6, min_lr=1e-5, label_smoothing=0.1, auto_augment="rand-m9-mstd0.5-inc1",
        reprob=0.25, mixup=0.8, cutmix=1.0, color_jitter=0.4, ema_decay=0.99984,
    ),
}
# BOAT-CSWin-B: batch 1024 at lr 1e-3, weight decay 0.1, EMA 0.99992.
_CSWIN_BASE = dict(batch_size=1024, base_lr=1e-3, lr_base_batch=1024, weight_decay=0.1, ema_decay=0.99992)


@dataclass
class TrainConfig(RunOptions):
    """Everything a run needs. ``None`` means: from the preset, else the default noted."""

    model: str = "boat_swin_tiny_patch4_window7_224"
    data: str = "digits"
    output: str = "runs/train"
    preset: Optional[str] = None
    model_kwargs: dict = field(default_factory=dict)
    img_size: Optional[int] = None  # default: the model's pretrained cfg
    epochs: int = 10
    batch_size: int = 64  # global images per optimizer step (all processes, all accumulation steps)
    accum_steps: int = 1
    lr: Optional[float] = None  # default: base_lr * batch_size / lr_base_batch
    base_lr: float = 5e-4
    lr_base_batch: int = 512
    min_lr: float = 1e-6
    warmup_lr: float = 1e-6
    warmup_epochs: int = 0
    cooldown_epochs: int = 0
    weight_decay: float = 0.05
    clip_grad: Optional[float] = None
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    auto_augment: Optional[str] = None
    color_jitter: Optional[float] = 0.4
    hflip: float = 0.5
    scale: tuple = (0.08, 1.0)
    reprob: float = 0.0
    crop_pct: Optional[float] = None
    drop_path: Optional[float] = None  # default: the released rate for the model size, else 0.1
    ema_decay: Optional[float] = None
    grad_checkpointing: bool = False
    pretrained_file: Optional[str] = None  # initial weights: any file checkpoint.load_weights reads
    reset_head: bool = False
    partial_weights: bool = False  # accept a pretrained file that gives less than half of the model

    def check(self) -> None:
        """Raises a ValueError naming the first option that cannot run."""
        check_bounds(self, {**RUN_OPTION_BOUNDS, **_BOUNDS})
        if not isinstance(self.model_kwargs, dict):
            raise ValueError(f"--model-kwargs must be a JSON object, got {self.model_kwargs!r}")
        if len(self.scale) != 2 or self.scale[0] > self.scale[1]:
            raise ValueError(f"--scale must be two values, low <= high, got {self.scale!r}")
        if self.resume and (self.pretrained_file or self.overwrite):
            raise ValueError("--resume continues a run with its own weights; drop --pretrained-file and --overwrite")


_BOUNDS = dict(
    img_size=AT_LEAST_ONE, epochs=AT_LEAST_ONE, batch_size=AT_LEAST_ONE, accum_steps=AT_LEAST_ONE, lr=POSITIVE,
    base_lr=POSITIVE, lr_base_batch=AT_LEAST_ONE, min_lr=NOT_NEGATIVE, warmup_lr=NOT_NEGATIVE,
    warmup_epochs=NOT_NEGATIVE, cooldown_epochs=NOT_NEGATIVE, weight_decay=NOT_NEGATIVE, clip_grad=POSITIVE,
    label_smoothing=Bounds(0, 1, high_open=True), mixup=NOT_NEGATIVE, cutmix=NOT_NEGATIVE, color_jitter=NOT_NEGATIVE,
    hflip=PROBABILITY, scale=Bounds(0, 1, low_open=True), reprob=PROBABILITY, crop_pct=Bounds(0, 1, low_open=True),
    drop_path=Bounds(0, 1, high_open=True), ema_decay=Bounds(0, 1, low_open=True, high_open=True),
)
_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def resolve_config(overrides: dict[str, Any]) -> TrainConfig:
    """Defaults, then the preset (if any), then explicit ``overrides`` (``None`` values are ignored).

    With ``resume``, the options are those the run started with (read from its checkpoint); an explicit
    option that would change what the run computes is an error, run options (:data:`RUN_OPTIONS`) apply.

    Raises:
        ValueError: unknown options or presets, values out of range, or options a resumed run cannot take.
    """
    values = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(values) - set(_FIELDS)
    if unknown:
        raise ValueError(f"unknown training options: {sorted(unknown)}")
    if values.get("resume") is not None:
        config = resumed_config(TrainConfig, values)
        config.model_kwargs = check_architecture_arguments(config.model_kwargs, values["resume"])
        return config
    preset = values.get("preset")
    merged: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
        merged.update(PRESETS[preset])
        model = values.get("model", merged.get("model", TrainConfig.model))
        if preset == "boat_cswin" and "base" in model:
            merged.update(_CSWIN_BASE)
        size = next((s for s in ("tiny", "small", "base") if s in model), None)
        if preset in _DROP_PATH and size:
            merged["drop_path"] = _DROP_PATH[preset][size]
    merged.update(values)
    config = TrainConfig(**merged)
    config.check()
    if config.lr is None:
        config.lr = config.base_lr * config.batch_size / config.lr_base_batch
    if config.drop_path is None:
        config.drop_path = DEFAULT_DROP_PATH
    return config


def _transforms(config: TrainConfig):
    from timm.data import create_transform, resolve_data_config
    from timm.models import get_pretrained_cfg

    overrides = dict(input_size=(3, config.img_size, config.img_size)) if config.img_size else {}
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
        raise ValueError(f"--auto-augment {config.auto_augment!r} is not a timm augmentation policy (e.g. "
                         "rand-m9-mstd0.5-inc1, augmix-m5-w3, original, v0, 3a)") from None
    return train_transform, eval_transform_for(data_config), data_config


def _criterion(config: TrainConfig, num_classes: int):
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if config.mixup > 0 or config.cutmix > 0:
        mixup = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, label_smoothing=config.label_smoothing,
                      num_classes=num_classes)
        return mixup, SoftTargetCrossEntropy()
    if config.label_smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=config.label_smoothing)
    return None, nn.CrossEntropyLoss()


def _check_batching(config: TrainConfig, world: Distributed) -> int:
    per_step = world.world_size * config.accum_steps
    if config.batch_size % per_step:
        raise ValueError(
            f"batch size {config.batch_size} must be divisible by processes x accumulation steps ({per_step})"
        )
    return config.batch_size // config.accum_steps  # images per micro-step over all processes


def train_classifier(config: TrainConfig) -> dict:
    """Trains (or resumes) a classifier as ``config`` says; returns the summary written to ``summary.json``."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3

    start_time = time.time()
    config.check()
    world = setup_distributed(config.device)
    try:
        set_threads(config.threads, config.workers, world.local_world_size)
        micro_batch = _check_batching(config, world)
        seed_everything(config.seed)
        run = (RunDirectory(config.output, resume=config.resume is not None, overwrite=config.overwrite)
               if world.is_main else None)
        resume_state = checkpoint_to_resume(config, "class_names", "classification", "train")

        check_model_name(config.model)
        train_transform, eval_transform, data_config = _transforms(config)
        train_set, val_set = build_datasets(config.data, train_transform, eval_transform)
        class_names = list(train_set.classes)
        if resume_state is not None and resume_state["class_names"] != class_names:
            raise ValueError(f"the classes of {config.data} ({len(class_names)}) differ from those of the resumed "
                             f"run ({len(resume_state['class_names'])})")
        weights_file = config.pretrained_file if resume_state is None else None
        model_kwargs = {"img_size": config.img_size, **config.model_kwargs}  # explicit model arguments first
        model, weights = create_classifier(config.model, len(class_names), weights_file, config.reset_head,
                                           config.partial_weights, drop_path_rate=config.drop_path, **model_kwargs)
        if weights is not None and world.is_main:
            print(weights.summary())
        if config.grad_checkpointing:
            model.set_grad_checkpointing(True)
        model.to(world.device)

        # The loaders draw their worker seeds from their own generators, never from the global RNG: the model's
        # random stream (drop path) is then the same for any number of workers and after a resume.
        sampler = GlobalBatchSampler(len(train_set), micro_batch, world.rank, world.world_size, config.seed)
        train_loader = DataLoader(SeededSamples(train_set), batch_sampler=sampler, num_workers=config.workers,
                                  collate_fn=collate_skipping, persistent_workers=config.workers > 0,
                                  generator=torch.Generator())
        val_loader = DataLoader(val_set, batch_size=max(1, micro_batch // world.world_size),
                                sampler=ShardSampler(len(val_set), world.rank, world.world_size),
                                num_workers=config.workers, collate_fn=collate_skipping, generator=torch.Generator())
        updates_per_epoch = len(sampler) // config.accum_steps
        if updates_per_epoch == 0:
            raise ValueError(f"fewer than {config.accum_steps} batches per epoch: lower --accum-steps")

        optimizer = create_optimizer_v2(model, "adamw", lr=config.lr, weight_decay=config.weight_decay)
        scheduler, total_epochs = create_scheduler_v2(
            optimizer, "cosine", num_epochs=config.epochs, warmup_epochs=config.warmup_epochs,
            cooldown_epochs=config.cooldown_epochs, min_lr=config.min_lr, warmup_lr=config.warmup_lr,
            step_on_epochs=False, updates_per_epoch=updates_per_epoch,
        )
        amp_dtype = amp_dtype_for(world.device, config.amp, config.amp_dtype)
        scaler = torch.amp.GradScaler(world.device.type, enabled=amp_dtype == torch.float16)
        ema = ModelEmaV3(model, decay=config.ema_decay) if config.ema_decay else None
        mixup, criterion = _criterion(config, len(class_names))

        start_epoch, rows, best = 0, [], dict(top1=-1.0, top5=-1.0, epoch=-1)
        if resume_state is not None:
            model.load_state_dict(resume_state["model"])
            optimizer.load_state_dict(resume_state["optimizer"])
            scheduler.load_state_dict(resume_state["scheduler"])
            scaler.load_state_dict(resume_state["scaler"])
            if ema is not None and resume_state.get("ema") is not None:
                ema.load_state_dict(resume_state["ema"])
            start_epoch, rows, best = resume_state["epoch"] + 1, resume_state["metrics"], resume_state["best"]
        ddp_model = DistributedDataParallel(model) if world.enabled else model

        for epoch in range(start_epoch, total_epochs):
            seed_everything(derive_seed(config.seed, epoch))
            sampler.set_epoch(epoch)
            epoch_stats = _train_one_epoch(
                ddp_model, model, train_loader, optimizer, scheduler, scaler, ema, mixup, criterion, config,
                world, amp_dtype, epoch, total_epochs, updates_per_epoch,
            )
            metrics = evaluate_classifier(model, val_loader, world, amp_dtype, progress=config.progress and world.is_main,
                               description=f"eval {epoch + 1}/{total_epochs}")
            ema_metrics = (evaluate_classifier(ema.module, val_loader, world, amp_dtype, progress=False)
                           if ema is not None else None)
            check_finite(metrics["loss"], f"validation loss at epoch {epoch + 1}", config.output)
            if ema_metrics is not None:
                check_finite(ema_metrics["loss"], f"EMA validation loss at epoch {epoch + 1}", config.output)
            row = dict(epoch=epoch, train_loss=epoch_stats["loss"], lr=epoch_stats["lr"], val_loss=metrics["loss"],
                       top1=metrics["top1"], top5=metrics["top5"],
                       ema_top1=ema_metrics["top1"] if ema_metrics else None,
                       ema_top5=ema_metrics["top5"] if ema_metrics else None,
                       images_per_s=epoch_stats["images_per_s"],
                       skipped_images=epoch_stats["skipped"] + metrics["skipped"])
            rows.append(row)
            score = max(row["top1"], row["ema_top1"] or -1.0)
            is_best = score > best["top1"]
            if is_best:
                best = dict(top1=score, top5=row["top5"] if score == row["top1"] else row["ema_top5"], epoch=epoch)
            if run is not None:
                run.save_checkpoint(
                    dict(model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                         scaler=scaler.state_dict(), ema=ema.state_dict() if ema is not None else None, epoch=epoch,
                         best=best, metrics=rows, rng=rng_state(), config=dataclasses.asdict(config),
                         model_name=config.model, model_kwargs=config.model_kwargs, class_names=class_names,
                         data_config=data_config),
                    is_best,
                )
                run.write_metrics(rows, METRIC_FIELDS)
                run.plot(rows, PLOT_PANELS, title=f"{config.model} on {config.data}")
            world.barrier()

        summary = dict(
            model=config.model, data=config.data, epochs=total_epochs,
            final_top1=rows[-1]["top1"] if rows else None, final_top5=rows[-1]["top5"] if rows else None,
            best_top1=best["top1"], best_top5=best["top5"], best_epoch=best["epoch"],
            wall_time_s=time.time() - start_time, world_size=world.world_size,
            skipped_images=sum(row["skipped_images"] for row in rows), output=str(config.output),
            args=dataclasses.asdict(config),
        )
        if run is not None:
            run.write_summary(summary)
        return summary
    finally:
        world.shutdown()


def _train_one_epoch(ddp_model, model, loader, optimizer, scheduler, scaler, ema, mixup, criterion,
                     config: TrainConfig, world: Distributed, amp_dtype, epoch: int, total_epochs: int,
                     updates_per_epoch: int) -> dict:
    ddp_model.train()
    device = world.device
    num_updates = epoch * updates_per_epoch
    loss_sum, seen, skipped, started = 0.0, 0, 0, time.perf_counter()
    batches = tqdm(loader, desc=f"train {epoch + 1}/{total_epochs}", disable=not (config.progress and world.is_main),
                   leave=False, dynamic_ncols=True)
    optimizer.zero_grad(set_to_none=True)
    for step, (images, targets, lost) in enumerate(batches):
        skipped += lost
        last_micro_step = (step + 1) % config.accum_steps == 0
        if mixup is not None and len(images) % 2:  # mixup pairs images: drop one when a skip made it odd
            images, targets = images[:-1], targets[:-1]
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if mixup is not None and len(images):
            images, targets = mixup(images, targets)
        sync = nullcontext() if (last_micro_step or not world.enabled) else ddp_model.no_sync()
        with sync:
            with autocast(device, amp_dtype):
                loss = criterion(ddp_model(images), targets) if len(images) else images.new_zeros(())
            raise_if_non_finite(loss, world, f"epoch {epoch + 1}, step {step + 1}", config.output)
            scaler.scale(loss / config.accum_steps).backward()
        if last_micro_step:
            optimizer_step(model, optimizer, scaler, config.clip_grad)
            num_updates += 1
            scheduler.step_update(num_updates)
            if ema is not None:
                ema.update(model, step=num_updates)
        loss_sum += float(loss.detach()) * len(images)
        seen += len(images)
        elapsed = time.perf_counter() - started
        batches.set_postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                            img_s=f"{seen * world.world_size / max(elapsed, 1e-9):.1f}")
    totals = world.all_reduce_sum(torch.tensor([loss_sum, seen, skipped], dtype=torch.float64))
    elapsed = time.perf_counter() - started
    return dict(loss=float(totals[0] / max(totals[1], 1)), lr=optimizer.param_groups[0]["lr"],
                images_per_s=float(totals[1]) / elapsed, skipped=int(totals[2]))
