"""Classification recipes: the options of a run (:class:`TrainConfig`), the presets (the embedded digits demo
and the released ImageNet recipes) and how options, preset and defaults combine (:func:`resolve_config`)."""
from dataclasses import dataclass, field
from typing import Any, Optional

from timm.layers import to_2tuple

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

__all__ = ["PRESETS", "TrainConfig", "resolve_config"]

DIGITS_IMG_SIZE = 32
DEFAULT_DROP_PATH = 0.1  # for models without a released rate

# Drop-path rates of the released recipes per model size.
RELEASED_DROP_PATH = {
    "boat_swin": {"tiny": 0.2, "small": 0.3, "base": 0.5},
    "boat_cswin": {"tiny": 0.2, "small": 0.4, "base": 0.5},
}

PRESETS: dict[str, dict[str, Any]] = {
    # The embedded default: a small BOAT-Swin on the 8x8 handwritten digits, upscaled to 32x32.
    "digits": dict(
        model="boat_swin_tiny_patch4_window7_224",
        model_kwargs=dict(img_size=DIGITS_IMG_SIZE, patch_size=2, window_size=4, embed_dim=48,
                          depths=(2, 2, 2), num_heads=(2, 4, 8)),
        img_size=DIGITS_IMG_SIZE, epochs=35, batch_size=64, lr=2e-3, weight_decay=0.05, warmup_epochs=3,
        min_lr=1e-5, clip_grad=5.0, label_smoothing=0.1, drop_path=0.1, hflip=0.0, scale=(0.7, 1.0),
        color_jitter=None, auto_augment=None, reprob=0.0, mixup=0.0, cutmix=0.0, crop_pct=1.0,
        workers=0,  # the images are in memory: 0.15 ms of augmentation each, cheaper than worker processes
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
CSWIN_BASE = dict(batch_size=1024, base_lr=1e-3, lr_base_batch=1024, weight_decay=0.1, ema_decay=0.99992)


@dataclass
class TrainConfig(RunOptions):
    """Everything a classification run needs. ``None`` means: from the preset, else the default noted."""

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
    pretrained_file: Optional[str] = None  # initial weights: any file boat_vit.weights.load_weights reads
    pretrained: bool = False  # initial weights: the model's pretrained config's, downloaded (a new classifier)
    reset_head: bool = False
    partial_weights: bool = False  # accept a pretrained file that gives less than half of the model

    def check(self) -> None:
        """Raises a :class:`~boat_vit.errors.ConfigError` naming the first option that cannot run."""
        check_bounds(self, {**RUN_OPTION_BOUNDS, **BOUNDS})
        if not isinstance(self.model_kwargs, dict):
            raise ConfigError(Argument("model_kwargs"), f" must be a JSON object, got {self.model_kwargs!r}")
        if len(self.scale) != 2 or self.scale[0] > self.scale[1]:
            raise ConfigError(Argument("scale"), f" must be two values, low <= high, got {self.scale!r}")
        if self.resume and (self.pretrained_file or self.pretrained or self.overwrite):
            raise ConfigError(Argument("resume"), " continues a run with its own weights; drop ",
                              Argument("pretrained_file"), ", ", Argument("pretrained", True), " and ",
                              Argument("overwrite"))
        if self.pretrained and self.pretrained_file:
            raise ConfigError(Argument("pretrained", True), " and ", Argument("pretrained_file"),
                              " both give the initial weights; choose one")
        model_size = self.model_kwargs.get("img_size")
        if self.img_size is not None and model_size is not None and to_2tuple(model_size) != to_2tuple(self.img_size):
            raise ConfigError(Argument("img_size"), f" {self.img_size} differs from the img_size {model_size!r} of ",
                              Argument("model_kwargs"), " (give one of them)")
        if (self.reset_head or self.partial_weights) and not (self.pretrained_file or self.pretrained):
            raise ConfigError(Argument("reset_head" if self.reset_head else "partial_weights"), " applies to ",
                              Argument("pretrained_file"), " and ", Argument("pretrained", True),
                              ", which are not given")


BOUNDS = dict(
    img_size=AT_LEAST_ONE, epochs=AT_LEAST_ONE, batch_size=AT_LEAST_ONE, accum_steps=AT_LEAST_ONE, lr=POSITIVE,
    base_lr=POSITIVE, lr_base_batch=AT_LEAST_ONE, min_lr=NOT_NEGATIVE, warmup_lr=NOT_NEGATIVE,
    warmup_epochs=NOT_NEGATIVE, cooldown_epochs=NOT_NEGATIVE, weight_decay=NOT_NEGATIVE, clip_grad=POSITIVE,
    label_smoothing=Bounds(0, 1, high_open=True), mixup=NOT_NEGATIVE, cutmix=NOT_NEGATIVE, color_jitter=NOT_NEGATIVE,
    hflip=PROBABILITY, scale=Bounds(0, 1, low_open=True), reprob=PROBABILITY, crop_pct=Bounds(0, 1, low_open=True),
    drop_path=Bounds(0, 1, high_open=True), ema_decay=Bounds(0, 1, low_open=True, high_open=True),
)
def resolve_config(overrides: dict[str, Any], resumed: Optional[RunCheckpoint] = None) -> TrainConfig:
    """Defaults, then the preset (if any), then explicit ``overrides`` (``None`` values are ignored); with
    ``resume``, the options the run started with (:func:`~boat_vit.engine.resumed_config`; ``resumed``: its
    checkpoint where the caller has read it).

    Raises:
        ConfigError: unknown options or presets, values out of range, or options a resumed run cannot take.
    """
    values = given_options(TrainConfig, overrides, "training options")
    if values.get("resume") is not None:
        return resumed_config(TrainConfig, values, "classification", resumed, model_kwargs="model_kwargs")
    preset = values.get("preset")
    merged = preset_options(PRESETS, preset)
    if preset is not None:
        model = values.get("model", merged.get("model", TrainConfig.model))
        if preset == "boat_cswin" and "base" in model:
            merged.update(CSWIN_BASE)
        size = next((s for s in ("tiny", "small", "base") if s in model), None)
        if preset in RELEASED_DROP_PATH and size:
            merged["drop_path"] = RELEASED_DROP_PATH[preset][size]
    if "img_size" in values and "model_kwargs" not in values and "img_size" in merged.get("model_kwargs", {}):
        merged["model_kwargs"] = dict(merged["model_kwargs"], img_size=values["img_size"])  # the preset's model too
    merged.update(values)
    config = TrainConfig(**merged)
    config.check()
    if config.lr is None:
        config.lr = config.base_lr * config.batch_size / config.lr_base_batch
    if config.drop_path is None:
        config.drop_path = DEFAULT_DROP_PATH
    return config
