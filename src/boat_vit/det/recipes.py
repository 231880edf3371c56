"""Detection recipes: the options of a run (:class:`DetTrainConfig`), the host papers' COCO Mask R-CNN recipes
(``coco_maskrcnn_1x``, ``coco_maskrcnn_3x``), the ``digit_det`` task's, and how options, preset and defaults
combine (:func:`resolve_det_config`)."""
from dataclasses import dataclass, field
from typing import Any, Optional

from ..engine import (
    AT_LEAST_ONE,
    NOT_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    RUN_OPTION_BOUNDS,
    Bounds,
    RunCheckpoint,
    RunOptions,
    check_bounds,
    given_options,
    preset_options,
    resumed_config,
)
from ..errors import Argument, ConfigError
from .data import ON_BAD
from .model import DETECTOR_KINDS

__all__ = ["DROP_PATH_BY_SIZE", "PRESETS", "DetTrainConfig", "resolve_det_config"]

# Stochastic depth of the backbone by model size (Swin's Mask R-CNN configurations); other names: none.
DROP_PATH_BY_SIZE = {"tiny": 0.2, "small": 0.2, "base": 0.3}
MULTI_SCALE_SHORTER_SIDES = tuple(range(480, 801, 32))  # 480, 512, ..., 800
DIGIT_CANVAS = 128

_COCO_MASK_RCNN = dict(
    kind="mask_rcnn", fpn_channels=256, box_head_channels=1024, mask_head_channels=256, roi_samples=512,
    detections_per_image=100, max_size=1333, test_scale=800, hflip=0.5, keep_empty=False, batch_size=16, lr=1e-4,
    weight_decay=0.05, lr_decay=0.1, warmup_iters=500, warmup_ratio=0.001,
)
PRESETS: dict[str, dict[str, Any]] = {
    # Swin / CSWin Mask R-CNN 1x: 12 epochs, one scale (shorter side 800, longer at most 1333), steps at 8 and 11.
    "coco_maskrcnn_1x": dict(_COCO_MASK_RCNN, data="data/coco", train_scales=(800,), epochs=12, lr_steps=(8, 11)),
    # ... 3x: 36 epochs, shorter side drawn from 480-800 (step 32), steps at 27 and 33.
    "coco_maskrcnn_3x": dict(_COCO_MASK_RCNN, data="data/coco", train_scales=MULTI_SCALE_SHORTER_SIDES, epochs=36,
                             lr_steps=(27, 33)),
    # The digit-det task: a small BOAT-Swin from scratch on 128x128 canvases (at most 4 digits each: 20 detections
    # per image suffice), narrow heads; minutes on a CPU.
    "digit_det": dict(
        data="digit-det", backbone="boat_swin_tiny_patch4_window7_224",
        backbone_kwargs=dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8)), kind="mask_rcnn",
        fpn_channels=64, box_head_channels=256, mask_head_channels=64, roi_samples=128, detections_per_image=20,
        train_scales=(DIGIT_CANVAS,), test_scale=DIGIT_CANVAS, max_size=DIGIT_CANVAS, hflip=0.0, keep_empty=False,
        batch_size=4, lr=1e-3, weight_decay=0.05, epochs=2, lr_steps=(), lr_decay=0.1, warmup_iters=50,
        warmup_ratio=0.001, clip_grad=5.0, drop_path=0.0, eval_interval=50,
    ),
}


@dataclass
class DetTrainConfig(RunOptions):
    """Everything a detection run needs; defaults are the ``coco_maskrcnn_1x`` recipe."""

    backbone: str = "boat_swin_tiny_patch4_window7_224"
    backbone_kwargs: dict = field(default_factory=dict)
    backbone_weights: Optional[str] = None  # classification checkpoint, safetensors or released weights
    partial_weights: bool = False  # accept backbone weights that give less than half of the backbone
    data: str = "data/coco"  # a COCO-format root, or "digit-det[:key=value,...]"
    train_split: str = "train"  # instances_{train2017,train}.json
    val_split: str = "val"
    output: str = "runs/det"
    preset: Optional[str] = None
    kind: str = "mask_rcnn"
    fpn_channels: int = 256
    box_head_channels: int = 1024
    mask_head_channels: int = 256
    roi_samples: int = 512  # proposals per image that train the box head
    detections_per_image: int = 100
    drop_path: Optional[float] = None  # default: by backbone size (DROP_PATH_BY_SIZE)
    train_scales: tuple = (800,)  # shorter sides drawn from (one per image)
    max_size: int = 1333  # longer side at most (training and test)
    test_scale: int = 800  # shorter side at test time
    hflip: float = 0.5
    keep_empty: bool = False  # train on images without annotations too
    on_bad: str = "skip"  # bad annotations: "skip" (count and report) or "error"
    epochs: int = 12
    lr_steps: tuple = (8, 11)  # epochs after which the learning rate is multiplied by lr_decay
    lr_decay: float = 0.1
    batch_size: int = 16  # global images per iteration (all processes)
    lr: float = 1e-4
    weight_decay: float = 0.05  # not on norms, biases and relative position tables
    warmup_iters: int = 500
    warmup_ratio: float = 0.001  # warm-up starts at lr * warmup_ratio
    clip_grad: Optional[float] = None
    eval_interval: Optional[int] = None  # iterations between evaluations (default: one epoch)
    checkpoint_interval: Optional[int] = None  # iterations between checkpoints (default: eval_interval)

    def check(self) -> None:
        """Raises a :class:`~boat_vit.errors.ConfigError` naming the first option that cannot run."""
        check_bounds(self, {**RUN_OPTION_BOUNDS, **BOUNDS})
        if not isinstance(self.backbone_kwargs, dict):
            raise ConfigError(Argument("backbone_kwargs"), f" must be a JSON object, got {self.backbone_kwargs!r}")
        if self.kind not in DETECTOR_KINDS:
            raise ConfigError(Argument("kind"), f" must be one of {sorted(DETECTOR_KINDS)}, got {self.kind!r}")
        if self.on_bad not in ON_BAD:
            raise ConfigError(Argument("on_bad"), f" must be one of {ON_BAD}, got {self.on_bad!r}")
        if not self.train_scales:
            raise ConfigError(Argument("train_scales"), " must name at least one shorter side")
        if list(self.lr_steps) != sorted(self.lr_steps) or any(step >= self.epochs for step in self.lr_steps):
            raise ConfigError(Argument("lr_steps"), " must be increasing epochs below ",
                              Argument("epochs", self.epochs), f", got {list(self.lr_steps)}")
        if self.resume and (self.backbone_weights or self.overwrite):
            raise ConfigError(Argument("resume"), " continues a run with its own weights; drop ",
                              Argument("backbone_weights"), " and ", Argument("overwrite"))
        if self.partial_weights and not self.backbone_weights:
            raise ConfigError(Argument("partial_weights"), " applies to ", Argument("backbone_weights"),
                              ", which is not given")


BOUNDS = dict(
    fpn_channels=AT_LEAST_ONE, box_head_channels=AT_LEAST_ONE, mask_head_channels=AT_LEAST_ONE,
    roi_samples=AT_LEAST_ONE, detections_per_image=AT_LEAST_ONE, drop_path=Bounds(0, 1, high_open=True),
    train_scales=AT_LEAST_ONE, max_size=AT_LEAST_ONE, test_scale=AT_LEAST_ONE, hflip=PROBABILITY,
    epochs=AT_LEAST_ONE, lr_steps=AT_LEAST_ONE, lr_decay=Bounds(0, 1, low_open=True), batch_size=AT_LEAST_ONE,
    lr=POSITIVE, weight_decay=NOT_NEGATIVE, warmup_iters=NOT_NEGATIVE, warmup_ratio=Bounds(0, 1, low_open=True),
    clip_grad=POSITIVE, eval_interval=AT_LEAST_ONE, checkpoint_interval=AT_LEAST_ONE,
)

def drop_path_for(backbone: str) -> float:
    """The stochastic depth of a backbone by its size word (``tiny``, ``small``, ``base``); 0 for other names."""
    return next((rate for size, rate in DROP_PATH_BY_SIZE.items() if size in backbone), 0.0)


def resolve_det_config(overrides: dict[str, Any], resumed: Optional[RunCheckpoint] = None) -> DetTrainConfig:
    """Defaults, then the preset (if any), then explicit ``overrides`` (``None`` values are ignored); with
    ``resume``, the options the run started with (:func:`~boat_vit.engine.resumed_config`; ``resumed``: its
    checkpoint where the caller has read it).

    Raises:
        ConfigError: unknown options or presets, values out of range, or options a resumed run cannot take.
    """
    values = given_options(DetTrainConfig, overrides, "detection training options")
    for key in ("train_scales", "lr_steps"):
        if key in values:
            values[key] = tuple(values[key])
    if values.get("resume") is not None:
        config = resumed_config(DetTrainConfig, values, "detection", resumed, model_kwargs="backbone_kwargs")
    else:
        config = DetTrainConfig(**{**preset_options(PRESETS, values.get("preset")), **values})
        config.train_scales, config.lr_steps = tuple(config.train_scales), tuple(config.lr_steps)
        config.backbone_kwargs = dict(config.backbone_kwargs)
        if config.drop_path is None:
            config.drop_path = drop_path_for(config.backbone)
    config.check()
    return config
