"""Segmentation training: :func:`train_segmentation` takes a :class:`SegTrainConfig` (``boat-vit seg-train``).

UperNet on a BOAT backbone, iteration-based (the released ADE20K recipe is the ``ade20k_upernet`` preset:
512x512 crops, AdamW 6e-5, weight decay 0.01, poly schedule with 1500 linear warm-up iterations, 160k
iterations, batch 16). The run directory, atomic checkpoints, metrics, plots, ``torchrun`` DDP and AMP come
from the run engine (:mod:`boat_vit.engine`), as for classification. Every iteration starts
from RNG states derived from the seed and the iteration, and the data order and augmentation depend only
on the seed, so ``--resume`` continues a run exactly from its last checkpoint.
"""
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
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
    ResumedBatches,
    RunDirectory,
    RunOptions,
    SeededSamples,
    amp_dtype_for,
    autocast,
    check_bounds,
    check_finite,
    checkpoint_to_resume,
    derive_seed,
    optimizer_step,
    raise_if_non_finite,
    resumed_config,
    seed_everything,
    set_threads,
    setup_distributed,
)
from ..models import check_architecture_arguments
from .data import (
    DatasetSpec, EvalTransform, SegmentationFolder, TrainAugmentation, check_samples, checked_batches,
    collate_segmentation, dataset_spec,
)
from .evaluate import InferenceOptions, eval_loader, evaluate_segmentation, format_scores
from .inference import as_pair
from .model import DEFAULT_AUX_CHANNELS, BoatUPerNet, load_backbone_weights

__all__ = ["PRESETS", "SegTrainConfig", "resolve_seg_config", "train_segmentation", "segmentation_loss"]

MIN_IMAGES_PER_PROCESS = 2  # UperNet's pooling branch has 1x1 maps: batch norm needs two images
METRIC_FIELDS = ("iteration", "train_loss", "lr", "miou", "macc", "aacc", "images_per_s")
PLOT_PANELS = (
    ("training loss", (("train_loss", None),)),
    ("validation (%)", (("miou", "mIoU"), ("macc", "mAcc"), ("aacc", "pixel acc."))),
    ("learning rate", (("lr", None),)),
)

PRESETS: dict[str, dict[str, Any]] = {
    # The released ADE20K recipe (CSWin / Swin UperNet configs): 8 GPUs x 2 images.
    "ade20k_upernet": dict(
        dataset="ade20k", crop_size=(512, 512), scale=(2048, 512), ratio_range=(0.5, 2.0), cat_max_ratio=0.75,
        hflip=0.5, photometric=True, test_scale=(2048, 512), iterations=160_000, batch_size=16, lr=6e-5,
        min_lr=0.0, weight_decay=0.01, poly_power=1.0, warmup_iters=1500, warmup_ratio=1e-6,
        decoder_channels=512, aux_weight=0.4, drop_path=0.3, eval_interval=16_000, checkpoint_interval=16_000,
    ),
}


@dataclass
class SegTrainConfig(RunOptions):
    """Everything a segmentation run needs; defaults are the ``ade20k_upernet`` recipe."""

    backbone: str = "boat_swin_tiny_patch4_window7_224"
    backbone_kwargs: dict = field(default_factory=dict)
    backbone_weights: Optional[str] = None  # classification checkpoint, safetensors or released weights
    data: str = "data/ADEChallengeData2016"
    dataset: str = "ade20k"  # or "folder" (give num_classes)
    num_classes: Optional[int] = None
    ignore_index: Optional[int] = None
    reduce_zero_label: Optional[bool] = None
    output: str = "runs/seg"
    preset: Optional[str] = None
    decoder_channels: int = 512
    aux_weight: float = 0.4  # weight of the auxiliary FCN head's loss; 0: no auxiliary head
    drop_path: float = 0.3
    crop_size: tuple = (512, 512)
    scale: tuple = (2048, 512)
    ratio_range: tuple = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    hflip: float = 0.5
    photometric: bool = True
    test_scale: Optional[tuple] = (2048, 512)  # None: evaluate at the original size
    iterations: int = 160_000
    batch_size: int = 16  # global images per iteration (all processes)
    lr: float = 6e-5
    min_lr: float = 0.0
    weight_decay: float = 0.01
    poly_power: float = 1.0
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    clip_grad: Optional[float] = None
    eval_interval: int = 16_000
    checkpoint_interval: int = 16_000
    eval_mode: str = "whole"
    eval_stride: tuple = (341, 341)
    partial_weights: bool = False  # accept backbone weights that give less than half of the backbone

    def check(self) -> None:
        """Raises a ValueError naming the first option that cannot run."""
        check_bounds(self, {**RUN_OPTION_BOUNDS, **_BOUNDS})
        if not isinstance(self.backbone_kwargs, dict):
            raise ValueError(f"--backbone-kwargs must be a JSON object, got {self.backbone_kwargs!r}")
        if self.ratio_range[0] > self.ratio_range[1]:
            raise ValueError(f"--ratio-range must be low <= high, got {self.ratio_range!r}")
        if self.resume and (self.backbone_weights or self.overwrite):
            raise ValueError("--resume continues a run with its own weights; drop --backbone-weights and --overwrite")


_BOUNDS = dict(
    num_classes=AT_LEAST_ONE, decoder_channels=AT_LEAST_ONE, aux_weight=NOT_NEGATIVE,
    drop_path=Bounds(0, 1, high_open=True), crop_size=AT_LEAST_ONE, scale=AT_LEAST_ONE, ratio_range=POSITIVE,
    cat_max_ratio=Bounds(0, 1, low_open=True), hflip=PROBABILITY, test_scale=AT_LEAST_ONE, iterations=AT_LEAST_ONE,
    batch_size=AT_LEAST_ONE, lr=POSITIVE, min_lr=NOT_NEGATIVE, weight_decay=NOT_NEGATIVE, poly_power=POSITIVE,
    warmup_iters=NOT_NEGATIVE, warmup_ratio=PROBABILITY, clip_grad=POSITIVE, eval_interval=AT_LEAST_ONE,
    checkpoint_interval=AT_LEAST_ONE, eval_stride=AT_LEAST_ONE,
)
_FIELDS = tuple(f.name for f in dataclasses.fields(SegTrainConfig))


def resolve_seg_config(overrides: dict[str, Any]) -> SegTrainConfig:
    """Defaults, then the preset (if any), then explicit ``overrides`` (``None`` values are ignored).

    With ``resume``, the options are those the run started with (read from its checkpoint); an explicit
    option that would change what the run computes is an error, run options (:data:`RUN_OPTIONS`) apply.

    Raises:
        ValueError: unknown options or presets, values out of range, or options a resumed run cannot take.
    """
    values = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(values) - set(_FIELDS)
    if unknown:
        raise ValueError(f"unknown segmentation training options: {sorted(unknown)}")
    if values.get("resume") is not None:
        for key in ("crop_size", "eval_stride"):
            if key in values:
                values[key] = as_pair(values[key])
        config = resumed_config(SegTrainConfig, values)
        config.backbone_kwargs = check_architecture_arguments(config.backbone_kwargs, values["resume"])
    else:
        preset = values.get("preset")
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
        config = SegTrainConfig(**{**PRESETS.get(preset, {}), **values})
        config.crop_size, config.eval_stride = as_pair(config.crop_size), as_pair(config.eval_stride)
    config.check()
    return config


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


def _datasets(config: SegTrainConfig, spec: DatasetSpec, mean, std) -> SegmentationFolder:
    augmentation = TrainAugmentation(
        config.crop_size, mean, std, scale=config.scale, ratio_range=config.ratio_range,
        cat_max_ratio=config.cat_max_ratio, hflip=config.hflip, photometric=config.photometric,
        ignore_index=spec.ignore_index,
    )
    return SegmentationFolder(Path(config.data), "training", spec, augmentation)


class _Running:
    """Training loss and throughput since the last metrics row; folded over processes at checkpoints."""

    def __init__(self, loss: float = 0.0, images: float = 0.0, seconds: float = 0.0):
        self.loss, self.images, self.seconds = loss, images, seconds

    def fold(self, world: Distributed) -> dict:
        """Sums over processes; the main process keeps the sums, the others start again from zero."""
        totals = world.all_reduce_sum(torch.tensor([self.loss, self.images], dtype=torch.float64))
        self.loss, self.images = (float(totals[0]), float(totals[1])) if world.is_main else (0.0, 0.0)
        return dict(loss=float(totals[0]), images=float(totals[1]), seconds=self.seconds)


def train_segmentation(config: SegTrainConfig) -> dict:
    """Trains (or resumes) a segmenter as ``config`` says.

    Returns:
        The summary written to ``summary.json`` (on the main process; ``{}`` on the others).
    """
    from timm.models import get_pretrained_cfg
    from timm.optim import create_optimizer_v2
    from timm.scheduler import PolyLRScheduler

    start_time = time.time()
    config.check()
    world = setup_distributed(config.device)
    try:
        set_threads(config.threads, config.workers, world.local_world_size)
        if config.batch_size % world.world_size or config.batch_size // world.world_size < MIN_IMAGES_PER_PROCESS:
            raise ValueError(f"batch size {config.batch_size} must be a multiple of the {world.world_size} processes "
                             f"with at least {MIN_IMAGES_PER_PROCESS} images each (batch norm in UperNet)")
        seed_everything(config.seed)
        run = (RunDirectory(config.output, resume=config.resume is not None, overwrite=config.overwrite)
               if world.is_main else None)
        resume_state = checkpoint_to_resume(config, "segmenter", "segmentation", "seg-train")
        spec = dataset_spec(config.dataset, config.num_classes, config.ignore_index, config.reduce_zero_label)
        segmenter_args = dict(backbone=config.backbone, num_classes=spec.num_classes,
                              backbone_kwargs=config.backbone_kwargs, decoder_channels=config.decoder_channels,
                              aux_channels=DEFAULT_AUX_CHANNELS if config.aux_weight else 0,
                              drop_path_rate=config.drop_path)
        model = BoatUPerNet(**segmenter_args)
        pretrained_cfg = get_pretrained_cfg(config.backbone)
        mean, std = tuple(pretrained_cfg.mean), tuple(pretrained_cfg.std)
        test_scale = tuple(config.test_scale) if config.test_scale else None
        train_set = _datasets(config, spec, mean, std)
        val_loader = eval_loader(config.data, "validation", spec, EvalTransform(mean, std, test_scale), world,
                                 config.workers)
        for folder in (train_set, val_loader.dataset):  # a bad sample stops the run now, not hours later
            check_samples(folder, config.workers)
        weights_report = None
        if config.backbone_weights and resume_state is None:
            weights_report = load_backbone_weights(model, config.backbone_weights, allow_partial=config.partial_weights)
            if world.is_main:
                print(f"backbone {weights_report.summary()}\n  (decoder and heads start afresh)")
        model.to(world.device)
        if world.enabled and world.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)

        sampler = GlobalBatchSampler(len(train_set), config.batch_size, world.rank, world.world_size, config.seed)
        optimizer = create_optimizer_v2(model, "adamw", lr=config.lr, weight_decay=config.weight_decay)
        scheduler = PolyLRScheduler(
            optimizer, t_initial=config.iterations, power=config.poly_power, lr_min=config.min_lr,
            warmup_t=config.warmup_iters, warmup_lr_init=config.lr * config.warmup_ratio, t_in_epochs=False,
        )
        amp_dtype = amp_dtype_for(world.device, config.amp, config.amp_dtype)
        scaler = torch.amp.GradScaler(world.device.type, enabled=amp_dtype == torch.float16)
        inference = InferenceOptions(config.eval_mode, tuple(config.crop_size), tuple(config.eval_stride))

        iteration, rows, best, running = 0, [], dict(miou=-1.0, iteration=0, iou=[]), _Running()
        if resume_state is not None:
            model.load_state_dict(resume_state["model"])
            optimizer.load_state_dict(resume_state["optimizer"])
            scheduler.load_state_dict(resume_state["scheduler"])
            scaler.load_state_dict(resume_state["scaler"])
            iteration, rows, best = resume_state["iteration"], resume_state["metrics"], resume_state["best"]
            if world.is_main:
                running = _Running(**resume_state["running"])
        ddp_model = DistributedDataParallel(model) if world.enabled else model
        show = config.progress and world.is_main
        bar = tqdm(total=config.iterations, initial=iteration, desc="seg-train", disable=not show, dynamic_ncols=True)
        ddp_model.train()
        while iteration < config.iterations:
            epoch, done = divmod(iteration, len(sampler))
            sampler.set_epoch(epoch)
            loader = DataLoader(SeededSamples(train_set), batch_sampler=ResumedBatches(sampler, done),
                                num_workers=config.workers, collate_fn=collate_segmentation,
                                generator=torch.Generator())
            for images, labels, _ in checked_batches(loader):
                seed_everything(derive_seed(config.seed, iteration))
                started = time.perf_counter()
                images, labels = images.to(world.device, non_blocking=True), labels.to(world.device, non_blocking=True)
                with autocast(world.device, amp_dtype):
                    logits, aux = ddp_model(images, with_aux=True)
                loss = segmentation_loss(logits, aux, labels, spec.ignore_index, config.aux_weight)
                raise_if_non_finite(loss, world, f"iteration {iteration + 1}", config.output)
                scaler.scale(loss).backward()
                optimizer_step(model, optimizer, scaler, config.clip_grad)
                iteration += 1
                scheduler.step_update(iteration)
                running.loss += float(loss.detach()) * len(images)
                running.images += len(images)
                running.seconds += time.perf_counter() - started
                bar.update()
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")

                evaluate_now = iteration % config.eval_interval == 0 or iteration == config.iterations
                is_best = False
                if evaluate_now:
                    scores = evaluate_segmentation(model, val_loader, spec, inference, world, amp_dtype,
                                                   progress=show, description=f"eval @{iteration}")
                    if scores.non_finite_pixels:
                        check_finite(math.nan, f"segmentation output at iteration {iteration}", config.output)
                    totals = running.fold(world)
                    rows.append(dict(iteration=iteration, train_loss=totals["loss"] / max(totals["images"], 1),
                                     lr=optimizer.param_groups[0]["lr"], miou=scores.miou, macc=scores.macc,
                                     aacc=scores.aacc, images_per_s=totals["images"] / max(totals["seconds"], 1e-9)))
                    running = _Running()
                    is_best = scores.miou > best["miou"]
                    if is_best:
                        best = dict(miou=scores.miou, iteration=iteration, iou=scores.iou)
                    if show:
                        bar.write(f"iteration {iteration}: {format_scores(scores, spec.class_names, per_class=False)}")
                    ddp_model.train()
                if evaluate_now or iteration % config.checkpoint_interval == 0:
                    folded = running.fold(world)
                    if run is not None:
                        run.save_checkpoint(
                            dict(model=model.state_dict(), optimizer=optimizer.state_dict(),
                                 scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), iteration=iteration,
                                 best=best, metrics=rows, running=folded, config=dataclasses.asdict(config),
                                 segmenter=segmenter_args, backbone_part=model.backbone_part(),
                                 spec=dataclasses.asdict(spec),
                                 data=dict(mean=mean, std=std, test_scale=test_scale)),
                            is_best,
                        )
                        run.write_metrics(rows, METRIC_FIELDS)
                        run.plot(rows, PLOT_PANELS, title=f"UperNet + {config.backbone}", x="iteration",
                                 x_offset=0)
                    world.barrier()
                if iteration >= config.iterations:
                    break
        bar.close()

        summary = dict(
            backbone=config.backbone, data=config.data, iterations=config.iterations,
            final_miou=rows[-1]["miou"] if rows else None, best_miou=best["miou"], best_iteration=best["iteration"],
            best_class_iou=dict(zip(spec.class_names, best["iou"])),
            backbone_weights=dataclasses.asdict(weights_report) if weights_report else None,
            wall_time_s=time.time() - start_time, world_size=world.world_size, output=str(config.output),
            args=dataclasses.asdict(config),
        )
        if run is None:
            return {}
        run.write_summary(summary)
        return summary
    finally:
        world.shutdown()
