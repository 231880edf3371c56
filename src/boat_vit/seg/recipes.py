"""Segmentation recipes: the options of a run (:class:`SegTrainConfig`), the released ADE20K recipe
(``ade20k_upernet``) and how options, preset and defaults combine (:func:`resolve_seg_config`)."""
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
from .inference import as_pair

__all__ = ["PRESETS", "SegTrainConfig", "resolve_seg_config"]

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
    pretrained: bool = False  # backbone weights: the backbone's pretrained config's, downloaded
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
        """Raises a :class:`~boat_vit.errors.ConfigError` naming the first option that cannot run."""
        check_bounds(self, {**RUN_OPTION_BOUNDS, **BOUNDS})
        if not isinstance(self.backbone_kwargs, dict):
            raise ConfigError(Argument("backbone_kwargs"), f" must be a JSON object, got {self.backbone_kwargs!r}")
        if self.ratio_range[0] > self.ratio_range[1]:
            raise ConfigError(Argument("ratio_range"), f" must be low <= high, got {self.ratio_range!r}")
        if self.resume and (self.backbone_weights or self.pretrained or self.overwrite):
            raise ConfigError(Argument("resume"), " continues a run with its own weights; drop ",
                              Argument("backbone_weights"), ", ", Argument("pretrained", True), " and ",
                              Argument("overwrite"))
        if self.pretrained and self.backbone_weights:
            raise ConfigError(Argument("pretrained", True), " and ", Argument("backbone_weights"),
                              " both give the backbone's weights; choose one")
        if self.partial_weights and not (self.backbone_weights or self.pretrained):
            raise ConfigError(Argument("partial_weights"), " applies to ", Argument("backbone_weights"), " and ",
                              Argument("pretrained", True), ", which are not given")


BOUNDS = dict(
    num_classes=AT_LEAST_ONE, decoder_channels=AT_LEAST_ONE, aux_weight=NOT_NEGATIVE,
    drop_path=Bounds(0, 1, high_open=True), crop_size=AT_LEAST_ONE, scale=AT_LEAST_ONE, ratio_range=POSITIVE,
    cat_max_ratio=Bounds(0, 1, low_open=True), hflip=PROBABILITY, test_scale=AT_LEAST_ONE, iterations=AT_LEAST_ONE,
    batch_size=AT_LEAST_ONE, lr=POSITIVE, min_lr=NOT_NEGATIVE, weight_decay=NOT_NEGATIVE, poly_power=POSITIVE,
    warmup_iters=NOT_NEGATIVE, warmup_ratio=PROBABILITY, clip_grad=POSITIVE, eval_interval=AT_LEAST_ONE,
    checkpoint_interval=AT_LEAST_ONE, eval_stride=AT_LEAST_ONE,
)
def resolve_seg_config(overrides: dict[str, Any], resumed: Optional[RunCheckpoint] = None) -> SegTrainConfig:
    """Defaults, then the preset (if any), then explicit ``overrides`` (``None`` values are ignored); with
    ``resume``, the options the run started with (:func:`~boat_vit.engine.resumed_config`; ``resumed``: its
    checkpoint where the caller has read it).

    Raises:
        ConfigError: unknown options or presets, values out of range, or options a resumed run cannot take.
    """
    values = given_options(SegTrainConfig, overrides, "segmentation training options")
    if values.get("resume") is not None:
        for key in ("crop_size", "eval_stride"):
            if key in values:
                values[key] = as_pair(values[key])
        config = resumed_config(SegTrainConfig, values, "segmentation", resumed, model_kwargs="backbone_kwargs")
    else:
        config = SegTrainConfig(**{**preset_options(PRESETS, values.get("preset")), **values})
        config.crop_size, config.eval_stride = as_pair(config.crop_size), as_pair(config.eval_stride)
    config.check()
    return config
