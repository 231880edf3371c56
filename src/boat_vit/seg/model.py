"""UperNet on BOAT backbones through segmentation_models_pytorch's timm universal (``tu-``) encoders.

:class:`BoatUPerNet` wraps ``smp.UPerNet(encoder_name="tu-<timm model>")``: the backbone is the timm model
built with ``features_only=True`` (strides 4/8/16/32) and ``strict_img_size=False``, so any input size
runs; the wrapper pads inputs to the encoder's output stride and crops the logits back, and adds the
auxiliary FCN head of the released recipe (on the stride-16 features, used only for the training loss).
:func:`load_backbone_weights` initialises the backbone from a classification checkpoint and reports what
was loaded and what was left initial. :func:`load_segmenter` restores a trained segmenter from its
``seg-train`` checkpoint.
"""
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..engine import RunCheckpoint
from ..errors import ConfigError, first_line
from ..images import palette
from ..models import building, check_architecture_arguments, check_model_name
from ..models.features import FeatureNames
from ..weights import BACKBONE_PART, WeightsReport, load_weights
from .data import DatasetSpec, EvalTransform

__all__ = ["AuxiliaryHead", "BoatUPerNet", "Segmenter", "load_backbone_weights", "run_entries",
           "load_segmenter"]

PALETTE_SIZE = 256  # entries of a PNG palette
DEFAULT_DECODER_CHANNELS = 512  # mmseg UPerHead of the released Swin/CSWin configs
DEFAULT_AUX_CHANNELS = 256  # mmseg FCNHead of the released configs
AUX_DROPOUT = 0.1
AUX_FEATURE = -2  # stride-16 features (stage 3), as the released auxiliary head
ENCODER_PREFIX = "upernet.encoder.model."


class AuxiliaryHead(nn.Sequential):
    """FCN head: 3x3 conv, batch norm, ReLU, dropout, 1x1 classifier (logits at the feature's stride)."""

    def __init__(self, in_channels: int, channels: int, num_classes: int):
        super().__init__(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(AUX_DROPOUT),
            nn.Conv2d(channels, num_classes, 1),
        )


class BoatUPerNet(nn.Module):
    """UperNet (smp) on a timm backbone, for any input size, with an optional auxiliary FCN head.

    Args:
        backbone: timm model name, e.g. ``boat_swin_tiny_patch4_window7_224`` (strides 4/8/16/32).
        num_classes: Output classes.
        backbone_kwargs: Extra keyword arguments for ``timm.create_model`` (e.g. a smaller ``embed_dim``).
        decoder_channels: UperNet (PPM + FPN) width.
        aux_channels: Width of the auxiliary FCN head on the stride-16 features; 0 for none.
        drop_path_rate: Stochastic depth of the backbone.
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        backbone_kwargs: Optional[dict[str, Any]] = None,
        decoder_channels: int = DEFAULT_DECODER_CHANNELS,
        aux_channels: int = DEFAULT_AUX_CHANNELS,
        drop_path_rate: float = 0.0,
    ):
        import segmentation_models_pytorch as smp

        super().__init__()
        check_model_name(backbone)
        self.backbone_name = backbone
        self.backbone_kwargs = dict(backbone_kwargs or {})
        self.num_classes = num_classes
        timm_kwargs = dict(self.backbone_kwargs, strict_img_size=False, drop_path_rate=drop_path_rate)
        with building(f"backbone {backbone}", timm_kwargs):
            self.upernet = smp.UPerNet(
                encoder_name=f"tu-{backbone}", encoder_weights=None, classes=num_classes,
                decoder_channels=decoder_channels, **timm_kwargs,
            )
        self.size_divisor = self.upernet.encoder.output_stride
        channels = self.upernet.encoder.out_channels
        self.aux_head = AuxiliaryHead(channels[AUX_FEATURE], aux_channels, num_classes) if aux_channels else None

        self.backbone_names = FeatureNames(backbone, timm_kwargs)
        self._no_weight_decay = {ENCODER_PREFIX + name for name in self.backbone_names.no_weight_decay(self.backbone)}

    @property
    def backbone(self) -> nn.Module:
        """The timm feature extractor (``features_only`` wrapper of the backbone)."""
        return self.upernet.encoder.model

    def backbone_part(self) -> dict[str, Any]:
        """How a checkpoint of this model holds its backbone (:data:`~boat_vit.weights.BACKBONE_PART`)."""
        return dict(task="segmentation", prefix=ENCODER_PREFIX, renames=dict(self.backbone_names.renames))

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Backbone parameters the classifier exempts from weight decay, under this model's names."""
        return set(self._no_weight_decay)

    def forward(
        self, x: torch.Tensor, with_aux: bool = False
    ) -> Union[torch.Tensor, tuple[torch.Tensor, Optional[torch.Tensor]]]:
        """Per-pixel class logits ``(B, num_classes, H, W)`` for images ``(B, 3, H, W)`` of any size.

        The input is zero-padded to a multiple of the output stride and the logits cropped back. With
        ``with_aux``, ``(logits, aux_logits)``: the auxiliary head's logits at stride 16 (``None`` without
        the head), for the training loss.
        """
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % self.size_divisor, -width % self.size_divisor
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        features = self.upernet.encoder(x)
        logits = self.upernet.segmentation_head(self.upernet.decoder(features))[..., :height, :width]
        if not with_aux:
            return logits
        return logits, self.aux_head(features[AUX_FEATURE]) if self.aux_head is not None else None


def load_backbone_weights(
    model: BoatUPerNet, path: Union[str, Path], entry: Optional[str] = None, allow_partial: bool = False
) -> WeightsReport:
    """Initialises ``model``'s backbone from a weights file of the backbone's architecture.

    Takes a boat-vit classification checkpoint (``best.pth`` / ``last.pth``), the backbone part of a
    segmentation one, a converted safetensors file or released weights as downloaded, through
    :func:`~boat_vit.weights.load_weights` with the filter of :attr:`BoatUPerNet.backbone_names`
    (:meth:`~boat_vit.models.features.FeatureNames.weights_filter`). The classifier's head and final norm
    are unused.

    Args:
        model: The segmenter.
        path: The weights file.
        entry: Which entry of the file holds the weights (default: EMA weights first, as timm).
        allow_partial: Accept a file that gives less than half of the backbone's weights.

    Raises:
        WeightsMismatchError: a tensor of the file has another shape than the backbone's (another model size),
            or the file gives too little of the backbone without ``allow_partial``.
    """
    return load_weights(model.backbone, path, model.backbone_names.weights_filter, key=entry,
                        allow_partial=allow_partial, backbone=True)


SEGMENTER_ARGUMENTS = ("backbone", "num_classes", "backbone_kwargs", "decoder_channels", "aux_channels",
                       "drop_path_rate")


def _segmenter_arguments(run: RunCheckpoint) -> dict[str, Any]:
    """The :class:`BoatUPerNet` arguments a checkpoint stored, checked (backbone keywords: architecture only)."""
    stored = run.model_args
    if set(stored) - set(SEGMENTER_ARGUMENTS) or "backbone" not in stored or "num_classes" not in stored:
        raise run.damaged("model_args", f"does not hold the segmenter arguments {list(SEGMENTER_ARGUMENTS)}: "
                                        f"{stored!r}")
    return dict(stored, backbone_kwargs=check_architecture_arguments(stored.get("backbone_kwargs", {}),
                                                                     str(run.path)))


def _numbers(value: Any, count: int, positive: bool = False) -> bool:
    """Whether ``value`` is ``count`` numbers (above 0 where ``positive``)."""
    return isinstance(value, (tuple, list)) and len(value) == count and all(
        isinstance(v, (int, float)) and (v > 0 or not positive) for v in value)


def run_entries(run: RunCheckpoint) -> tuple[DatasetSpec, EvalTransform]:
    """The data set spec and test transform of a segmentation run checkpoint, checked (and the backbone part
    that checkpoints of this release declare).

    Raises:
        CheckpointError: an entry is missing or holds what a segmenter cannot use (naming the entry).
    """
    stored, data = run.entry("spec"), run.entry("data")
    if not isinstance(stored, dict):
        raise run.damaged("spec", f"is a {type(stored).__name__}, not a data set spec")
    try:
        spec = DatasetSpec(**stored)
    except (TypeError, ValueError) as error:
        raise run.damaged("spec", f"is not a data set spec ({first_line(error)}): {stored!r}") from None
    if (not isinstance(spec.class_names, (tuple, list)) or len(spec.class_names) != spec.num_classes
            or not all(isinstance(name, str) for name in spec.class_names)
            or spec.num_classes != run.model_args.get("num_classes")):
        raise run.damaged("spec", f"does not name the {run.model_args.get('num_classes')} classes of the model: "
                                  f"{stored!r}")
    if not isinstance(data, dict) or not (_numbers(data.get("mean"), 3) and _numbers(data.get("std"), 3)) or not (
            data.get("test_scale") is None or _numbers(data["test_scale"], 2, positive=True)):
        raise run.damaged("data", f"does not hold mean, std (3 numbers each) and test_scale: {data!r}")
    part = run.entry(BACKBONE_PART) if "format" in run.state else {"prefix": "", "renames": {}}
    if not (isinstance(part, dict) and isinstance(part.get("prefix"), str) and isinstance(part.get("renames"), dict)):
        raise run.damaged(BACKBONE_PART, f"does not say where the backbone is: {part!r}")
    return spec, EvalTransform(data["mean"], data["std"], data["test_scale"])


class Segmenter:
    """A trained segmentation model with what it needs at test time: data spec, normalisation, test scale."""

    def __init__(self, model: BoatUPerNet, spec: DatasetSpec, transform: EvalTransform):
        self.model, self.spec, self.transform = model, spec, transform

    def colour_table(self) -> np.ndarray:
        """RGB colour of every label value as written to files (the data set's own label convention)."""
        table = np.zeros((PALETTE_SIZE, 3), dtype=np.uint8)
        shift = int(self.spec.reduce_zero_label)
        table[shift:shift + self.spec.num_classes] = palette(self.spec.num_classes)[:PALETTE_SIZE - shift]
        return table


def load_segmenter(checkpoint: str, device: torch.device = torch.device("cpu")) -> Segmenter:
    """The segmenter of a segmentation run checkpoint (``best.pth`` / ``last.pth``), rebuilt with every
    argument it was trained with, in eval mode.

    Raises:
        CheckpointError: not a segmentation run checkpoint.
        WeightsMismatchError: weights that do not fit the stored arguments.
    """
    run = RunCheckpoint.read(checkpoint, task="segmentation")
    spec, transform = run_entries(run)
    try:
        model = BoatUPerNet(**_segmenter_arguments(run))
    except ConfigError as error:
        raise run.damaged("model_args", f"cannot make a model: {error}") from None
    run.load_into(model)
    return Segmenter(model.to(device).eval(), spec, transform)
