"""Segmentation training: ``boat-vit seg-train`` (``torchrun ... -m boat_vit.cli seg-train`` for DDP).

UperNet on a BOAT backbone, iteration-based (the released ADE20K recipe is the ``ade20k_upernet`` preset:
512x512 crops, AdamW 6e-5, weight decay 0.01, poly schedule with 1500 linear warm-up iterations, 160k
iterations, batch 16). The run directory, atomic checkpoints, metrics, plots, ``torchrun`` DDP and AMP are
those of classification training (:mod:`boat_vit.train`, :mod:`boat_vit.runs`). Every iteration starts
from RNG states derived from the seed and the iteration, and the data order and augmentation depend only
on the seed, so ``--resume`` continues a run exactly from its last checkpoint.
"""
import argparse
import dataclasses
import itertools
import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from ..data import GlobalBatchSampler, SeededSamples
from ..distributed import Distributed, setup_distributed
from ..evaluate import amp_dtype_for
from ..runs import RunDirectory, load_resume_checkpoint
from ..train import RunOptions, add_run_arguments, optimizer_step, raise_if_non_finite, seed_everything
from .data import (
    DatasetSpec, EvalTransform, SegmentationFolder, TrainAugmentation, checked_batches, collate_segmentation,
    dataset_spec,
)
from .evaluate import InferenceOptions, eval_loader, evaluate_segmentation, format_scores
from .inference import as_pair
from .model import DEFAULT_AUX_CHANNELS, BoatUPerNet, load_backbone_weights

__all__ = ["PRESETS", "SegTrainConfig", "resolve_seg_config", "train_segmentation", "segmentation_loss"]

ITERATION_SEED_STRIDE = 1_000_003  # per-iteration seeds of the model's RNG: seed * stride + iteration
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


def resolve_seg_config(overrides: dict[str, Any]) -> SegTrainConfig:
    """Defaults, then the preset (if any), then explicit ``overrides`` (``None`` values are ignored)."""
    values = {k: v for k, v in overrides.items() if v is not None}
    preset = values.get("preset")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    merged = {**PRESETS.get(preset, {}), **values}
    unknown = set(merged) - {f.name for f in dataclasses.fields(SegTrainConfig)}
    if unknown:
        raise ValueError(f"unknown segmentation training options: {sorted(unknown)}")
    config = SegTrainConfig(**merged)
    config.crop_size, config.eval_stride = as_pair(config.crop_size), as_pair(config.eval_stride)
    for name in ("iterations", "eval_interval", "checkpoint_interval"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(config, name)}")
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


class _ResumedBatches(Sampler[list]):
    """The batches of ``sampler`` from batch ``start`` on (the rest of an interrupted epoch)."""

    def __init__(self, sampler: GlobalBatchSampler, start: int):
        self.sampler, self.start = sampler, start

    def __len__(self) -> int:
        return len(self.sampler) - self.start

    def __iter__(self) -> Iterator[list]:
        return itertools.islice(iter(self.sampler), self.start, None)


def _resume_state(config: SegTrainConfig) -> Optional[dict]:
    if config.resume is None:
        return None
    state = load_resume_checkpoint(config.resume)
    if state.get("segmenter", {}).get("backbone") != config.backbone:
        raise ValueError(f"{config.resume} is not a segmentation run with backbone {config.backbone!r}")
    return state


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
    world = setup_distributed(config.device)
    try:
        if config.batch_size % world.world_size or config.batch_size // world.world_size < MIN_IMAGES_PER_PROCESS:
            raise ValueError(f"batch size {config.batch_size} must be a multiple of the {world.world_size} processes "
                             f"with at least {MIN_IMAGES_PER_PROCESS} images each (batch norm in UperNet)")
        seed_everything(config.seed)
        run = RunDirectory(config.output) if world.is_main else None
        resume_state = _resume_state(config)
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
        weights_report = None
        if config.backbone_weights and resume_state is None:
            weights_report = load_backbone_weights(model, config.backbone_weights)
            if world.is_main:
                print(weights_report.summary())
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
        autocast = torch.autocast(world.device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
        show = config.progress and world.is_main
        bar = tqdm(total=config.iterations, initial=iteration, desc="seg-train", disable=not show, dynamic_ncols=True)
        ddp_model.train()
        while iteration < config.iterations:
            epoch, done = divmod(iteration, len(sampler))
            sampler.set_epoch(epoch)
            loader = DataLoader(SeededSamples(train_set), batch_sampler=_ResumedBatches(sampler, done),
                                num_workers=config.workers, collate_fn=collate_segmentation)
            for images, labels, _ in checked_batches(loader):
                seed_everything(config.seed * ITERATION_SEED_STRIDE + iteration)
                started = time.perf_counter()
                images, labels = images.to(world.device, non_blocking=True), labels.to(world.device, non_blocking=True)
                with autocast:
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
                                 segmenter=segmenter_args, spec=dataclasses.asdict(spec),
                                 data=dict(mean=mean, std=std, test_scale=test_scale)),
                            is_best,
                        )
                        run.write_metrics(rows, METRIC_FIELDS)
                        run.plot(rows, title=f"UperNet + {config.backbone}", panels=PLOT_PANELS, x="iteration",
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``seg-train`` options; every recipe knob defaults to the preset, then to :class:`SegTrainConfig`."""
    defaults = SegTrainConfig()
    add = parser.add_argument
    add("--backbone", help=f"timm backbone with strides 4/8/16/32 (default {defaults.backbone})")
    add("--backbone-kwargs", type=json.loads, help='JSON keyword arguments for the backbone, e.g. '
                                                   '\'{"embed_dim": 48, "fsla_stages": false}\'')
    add("--backbone-weights", help="initial backbone weights: a boat-vit classification checkpoint (best.pth), a "
                                   "safetensors file or released BOAT weights as downloaded")
    add("--data", help=f"data root: ADEChallengeData2016 layout, images/ and annotations/ with training/ and "
                       f"validation/ (default {defaults.data})")
    add("--dataset", choices=["ade20k", "folder"], help="label convention: 'ade20k' (150 classes, 0 ignored, "
                                                        "labels shift by -1; the default) or 'folder'")
    add("--num-classes", type=int, help="number of classes (required for --dataset folder)")
    add("--ignore-index", type=int, help="label value excluded from loss and metrics (default 255)")
    add("--reduce-zero-label", action=argparse.BooleanOptionalAction, default=None,
        help="label 0 means 'other': ignore it and shift the others by -1 (default: on for ade20k)")
    add("--output", help=f"run directory: checkpoints, metrics.csv, summary.json, curves.png "
                         f"(default {defaults.output})")
    add("--preset", choices=sorted(PRESETS), help="'ade20k_upernet': the released ADE20K recipe (the defaults); "
                                                  "options override it")
    add("--decoder-channels", type=int, help=f"UperNet width (default {defaults.decoder_channels})")
    add("--aux-weight", type=float, help="auxiliary FCN head loss weight, 0 for no head "
                                         f"(default {defaults.aux_weight})")
    add("--drop-path", type=float, help=f"backbone stochastic depth (default {defaults.drop_path})")
    add("--crop-size", type=int, nargs="+", help="training crop, one or two (H W) ints; also the sliding window "
                                                 "(default 512)")
    add("--scale", type=int, nargs=2, help="base scale (long short) that the random ratio multiplies "
                                          "(default 2048 512)")
    add("--ratio-range", type=float, nargs=2, help="random rescale ratio range (default 0.5 2.0)")
    add("--cat-max-ratio", type=float, help="re-draw a crop (up to 10 times) while one class covers this share; "
                                            f"1 disables (default {defaults.cat_max_ratio})")
    add("--hflip", type=float, help=f"horizontal flip probability (default {defaults.hflip})")
    add("--photometric", action=argparse.BooleanOptionalAction, default=None,
        help="photometric distortion: brightness, contrast, saturation, hue (default on)")
    add("--test-scale", type=int, nargs=2, help="evaluation resize (long short), aspect kept (default 2048 512)")
    add("--no-test-resize", dest="test_scale", action="store_const", const=(), help="evaluate at the original size")
    add("--iterations", type=int, help=f"training iterations (default {defaults.iterations})")
    add("--batch-size", type=int, help="global images per iteration over all processes "
                                       f"(default {defaults.batch_size})")
    add("--lr", type=float, help=f"peak AdamW learning rate (default {defaults.lr})")
    add("--min-lr", type=float, help=f"learning rate at the end of the poly schedule (default {defaults.min_lr})")
    add("--weight-decay", type=float, help=f"AdamW weight decay; norms, biases and relative position tables "
                                           f"are exempt (default {defaults.weight_decay})")
    add("--poly-power", type=float, help=f"poly schedule power (default {defaults.poly_power})")
    add("--warmup-iters", type=int, help=f"linear warm-up iterations (default {defaults.warmup_iters})")
    add("--warmup-ratio", type=float, help=f"warm-up start as a fraction of --lr (default {defaults.warmup_ratio})")
    add("--clip-grad", type=float, help="clip the gradient norm to this value (default: no clipping)")
    add("--eval-interval", type=int, help=f"evaluate every this many iterations (default {defaults.eval_interval})")
    add("--checkpoint-interval", type=int, help="write last.pth every this many iterations "
                                                f"(default {defaults.checkpoint_interval})")
    add("--eval-mode", choices=["whole", "slide"], help="evaluation inference: whole image or sliding window of "
                                                        "--crop-size (default whole)")
    add("--eval-stride", type=int, nargs="+", help="sliding window stride, one or two ints (default 341)")
    add_run_arguments(parser, defaults)


def run_from_args(args: argparse.Namespace) -> int:
    summary = train_segmentation(resolve_seg_config({k: v for k, v in vars(args).items() if k != "func"}))
    if summary:
        print(f"best mIoU {summary['best_miou']:.2f} at iteration {summary['best_iteration']} (final "
              f"{summary['final_miou']:.2f}); run directory {summary['output']}/")
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("seg-train", help="train UperNet on a BOAT backbone (semantic segmentation)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run_from_args)

