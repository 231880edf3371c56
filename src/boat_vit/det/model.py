"""Mask R-CNN and Faster R-CNN (torchvision) on any timm backbone with ``features_only``, through an FPN.

:func:`create_detector` returns torchvision's :class:`~torchvision.models.detection.MaskRCNN` (or
:class:`~torchvision.models.detection.FasterRCNN`) whose backbone is :class:`TimmFeaturePyramid`: the timm model
built with ``features_only`` at strides 4, 8, 16 and 32 (any input size: models made for one size are built
with ``dynamic_img_size=True``), followed by torchvision's feature pyramid network with an extra stride-64 level
from max pooling (mmdetection's ``FPN(num_outs=5)``). The images are normalised with the backbone's own
mean and std (its pretrained config).

Sizes: in eval mode the detector resizes every image to the test scale (shorter side ``min_size``, longer side
at most ``max_size``) and maps boxes and masks back to the image's own size, as torchvision does. In training
mode images are taken at the size they come in: the training pipeline chooses the scale
(:class:`~boat_vit.det.data.TrainTransform`), as in mmdetection, so the choice depends only on the sample and
not on the process that loads it. Batches are zero-padded (after normalisation) to a multiple of 32.

``num_classes`` counts object categories (80 for COCO), as mmdetection does; the torchvision model has one
more output for the background (label 0). Labels ``1..num_classes`` are the categories in data set order
(:class:`~boat_vit.det.data.CategoryMap`).
"""
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import timm
import torch
import torch.nn as nn
from timm.layers import Format
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from ..engine import RunCheckpoint
from ..errors import Argument, CheckpointError, ConfigError
from ..models import check_architecture_arguments, check_model_name
from ..models.features import FeatureNames
from ..weights import WeightsReport, load_state_dict_into, load_weights
from .data import CategoryMap

__all__ = ["DETECTOR_ARGUMENTS", "DETECTOR_KINDS", "PYRAMID_STRIDES", "TimmFeaturePyramid", "TrainedDetector",
           "build_detector", "create_detector", "detector_backbone", "load_backbone_weights", "load_detector"]

DETECTOR_KINDS = {"mask_rcnn": MaskRCNN, "faster_rcnn": FasterRCNN}
PYRAMID_STRIDES = (4, 8, 16, 32)  # backbone feature maps the FPN takes (mmdetection's Swin/CSWin set-up)
DEFAULT_FPN_CHANNELS = 256
DEFAULT_BOX_HEAD_CHANNELS = 1024  # two shared fully connected layers (mmdetection's Shared2FCBBoxHead)
DEFAULT_MASK_HEAD_CHANNELS = 256  # four 3x3 convolutions (mmdetection's FCNMaskHead)
MASK_HEAD_CONVOLUTIONS = 4
BOX_POOL_SIZE = 7  # RoIAlign output of the box head (torchvision's MultiScaleRoIAlign default)
BACKBONE_PREFIX = "backbone.body."  # where a detector's state dict holds the timm backbone
DEFAULT_ROI_SAMPLES = 512  # proposals per image that train the box head (a quarter of them positive at most)
DEFAULT_MIN_SIZE = 800  # COCO test scale: shorter side 800, longer side at most 1333
DEFAULT_MAX_SIZE = 1333


def _feature_indices(backbone: str, kwargs: dict[str, Any]) -> tuple[int, ...]:
    """Indices of the backbone's feature maps at :data:`PYRAMID_STRIDES` (read from a meta-device build)."""
    with torch.device("meta"):
        probe = timm.create_model(backbone, features_only=True, **kwargs)
    reductions = list(probe.feature_info.reduction())
    missing = [stride for stride in PYRAMID_STRIDES if stride not in reductions]
    if missing:
        raise ConfigError(Argument("backbone", backbone), f" has feature maps at strides {reductions}, not at "
                          f"{missing}: a detector needs strides {list(PYRAMID_STRIDES)}")
    return tuple(reductions.index(stride) for stride in PYRAMID_STRIDES)


def _timm_kwargs(backbone: str, drop_path_rate: float, backbone_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments that build ``backbone`` for any input size, with ``backbone_kwargs`` on top."""
    from timm.models import get_pretrained_cfg

    kwargs: dict[str, Any] = dict(drop_path_rate=drop_path_rate) if drop_path_rate else {}  # not every model has it
    pretrained_cfg = get_pretrained_cfg(backbone)
    if pretrained_cfg is not None and pretrained_cfg.fixed_input_size:  # made for one size: allow any
        kwargs["dynamic_img_size"] = True
    return {**kwargs, **backbone_kwargs}


class TimmFeaturePyramid(nn.Module):
    """A timm backbone's stride 4-32 feature maps through a feature pyramid network (torchvision's).

    Outputs an ordered dict of ``out_channels``-wide maps ``"0"`` .. ``"3"`` (strides 4-32) and ``"pool"``
    (stride 64, max pooling of the last), the layout torchvision's R-CNN heads expect.

    Args:
        backbone: A registered timm model name (BOAT models, timm's Swin, ConvNeXt, ResNet, ...).
        fpn_channels: Width of the pyramid.
        drop_path_rate: Stochastic depth of the backbone.
        backbone_kwargs: More ``timm.create_model`` keyword arguments (e.g. ``fsla_stages=False``).

    Raises:
        ConfigError: an unknown backbone, arguments it does not take, or no feature maps at strides 4-32.
    """

    def __init__(self, backbone: str, fpn_channels: int = DEFAULT_FPN_CHANNELS, drop_path_rate: float = 0.0,
                 backbone_kwargs: Optional[dict[str, Any]] = None):
        super().__init__()
        check_model_name(backbone)
        self.backbone_name = backbone
        self.timm_kwargs = _timm_kwargs(backbone, drop_path_rate, dict(backbone_kwargs or {}))
        try:
            indices = _feature_indices(backbone, self.timm_kwargs)
            self.body = timm.create_model(backbone, features_only=True, out_indices=indices, **self.timm_kwargs)
        except TypeError as error:  # a keyword argument the backbone's constructor does not take
            raise ConfigError("cannot build ", Argument("backbone", backbone), f" with {self.timm_kwargs}: {error} "
                              "(see ", Argument("backbone_kwargs"), ")") from None
        self.channels_last_output = getattr(self.body, "output_fmt", Format.NCHW) == Format.NHWC
        self.fpn = FeaturePyramidNetwork(self.body.feature_info.channels(), fpn_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = fpn_channels

        self.backbone_names = FeatureNames(backbone, self.timm_kwargs)
        self.no_weight_decay_names = self.backbone_names.no_weight_decay(self.body)

    def backbone_part(self) -> dict[str, Any]:
        """How a detector's checkpoint holds this backbone (:data:`~boat_vit.weights.BACKBONE_PART`)."""
        return dict(task="detection", prefix=BACKBONE_PREFIX, renames=dict(self.backbone_names.renames))

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        features = self.body(images)
        if self.channels_last_output:
            features = [feature.permute(0, 3, 1, 2) for feature in features]
        return self.fpn(OrderedDict((str(level), feature) for level, feature in enumerate(features)))


def create_detector(
    backbone: str,
    num_classes: int,
    kind: str = "mask_rcnn",
    *,
    min_size: int = DEFAULT_MIN_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
    fpn_channels: int = DEFAULT_FPN_CHANNELS,
    box_head_channels: int = DEFAULT_BOX_HEAD_CHANNELS,
    mask_head_channels: int = DEFAULT_MASK_HEAD_CHANNELS,
    roi_samples_per_image: int = DEFAULT_ROI_SAMPLES,
    drop_path_rate: float = 0.0,
    detections_per_image: int = 100,
    score_threshold: float = 0.05,
    **backbone_kwargs: Any,
) -> GeneralizedRCNN:
    """A torchvision Mask R-CNN (or Faster R-CNN) on the timm model ``backbone``, with an FPN over strides 4-32.

    Args:
        backbone: A registered timm model with ``features_only`` (``boat_swin_tiny_patch4_window7_224``,
            ``boat_cswin_tiny_224``, ``swin_tiny_patch4_window7_224``, ...).
        num_classes: Object categories, background not counted (80 for COCO).
        kind: ``"mask_rcnn"`` (boxes and masks) or ``"faster_rcnn"`` (boxes).
        min_size: Test scale: shorter side of the image in eval mode.
        max_size: Test scale: longest side at most this.
        fpn_channels: Width of the feature pyramid.
        box_head_channels: Width of the box head's two fully connected layers.
        mask_head_channels: Width of the mask head's four convolutions (Mask R-CNN).
        roi_samples_per_image: Proposals per image sampled to train the box head.
        drop_path_rate: Stochastic depth of the backbone.
        detections_per_image: Most detections kept per image (eval mode).
        score_threshold: Detections scoring lower are dropped (eval mode).
        **backbone_kwargs: More ``timm.create_model`` keyword arguments for the backbone.

    Raises:
        ConfigError: an unknown kind or backbone, or a backbone without feature maps at strides 4-32.
    """
    if kind not in DETECTOR_KINDS:
        raise ConfigError("unknown detector ", Argument("kind", kind), f"; choose from {sorted(DETECTOR_KINDS)}")
    if num_classes < 1:
        raise ConfigError(Argument("num_classes"), f" must be at least 1, got {num_classes}")
    from timm.models import get_pretrained_cfg

    pyramid = TimmFeaturePyramid(backbone, fpn_channels, drop_path_rate, backbone_kwargs)
    pretrained_cfg = get_pretrained_cfg(backbone)
    outputs = num_classes + 1  # and the background
    heads: dict[str, nn.Module] = dict(
        box_head=TwoMLPHead(fpn_channels * BOX_POOL_SIZE**2, box_head_channels),
        box_predictor=FastRCNNPredictor(box_head_channels, outputs),
    )
    if kind == "mask_rcnn":
        heads.update(mask_head=MaskRCNNHeads(fpn_channels, [mask_head_channels] * MASK_HEAD_CONVOLUTIONS, dilation=1),
                     mask_predictor=MaskRCNNPredictor(mask_head_channels, mask_head_channels, outputs))
    return DETECTOR_KINDS[kind](
        pyramid, min_size=min_size, max_size=max_size,
        image_mean=list(pretrained_cfg.mean), image_std=list(pretrained_cfg.std),
        box_detections_per_img=detections_per_image, box_score_thresh=score_threshold,
        box_batch_size_per_image=roi_samples_per_image,
        _skip_resize=True,  # training images come at the scale the data pipeline chose
        **heads,
    )


def detector_backbone(detector: GeneralizedRCNN) -> TimmFeaturePyramid:
    """The :class:`TimmFeaturePyramid` of a detector made by :func:`create_detector`."""
    if not isinstance(detector.backbone, TimmFeaturePyramid):
        raise TypeError(f"the detector's backbone is a {type(detector.backbone).__name__}, not a TimmFeaturePyramid")
    return detector.backbone


def load_backbone_weights(detector: GeneralizedRCNN, path: Union[str, Path], entry: Optional[str] = None,
                          allow_partial: bool = False) -> WeightsReport:
    """Initialises a detector's backbone from a weights file of the backbone's architecture.

    Takes released BOAT weights as downloaded, a converted safetensors file, a boat-vit classification
    checkpoint (``best.pth``) or the backbone part of a segmentation or detection run checkpoint, through
    :func:`~boat_vit.weights.load_weights` with the filter of :attr:`TimmFeaturePyramid.backbone_names`
    (:meth:`~boat_vit.models.features.FeatureNames.weights_filter`). The classifier's head and final norm are
    reported unused; the FPN and heads start afresh.

    Args:
        detector: A detector made by :func:`create_detector`.
        path: The weights file.
        entry: Which entry of the file holds the weights (default: EMA weights first, as timm).
        allow_partial: Accept a file that gives less than half of the backbone's weights.

    Raises:
        WeightsMismatchError: a tensor of the file has another shape than the backbone's (another model size),
            or the file gives too little of the backbone without ``allow_partial``.
    """
    pyramid = detector_backbone(detector)
    return load_weights(pyramid.body, path, pyramid.backbone_names.weights_filter, key=entry,
                        allow_partial=allow_partial, backbone=True)


# The arguments of create_detector a run checkpoint stores (model_args), backbone keywords apart.
DETECTOR_ARGUMENTS = ("backbone", "num_classes", "kind", "min_size", "max_size", "fpn_channels", "box_head_channels",
                      "mask_head_channels", "roi_samples_per_image", "drop_path_rate", "detections_per_image",
                      "score_threshold", "backbone_kwargs")


def build_detector(model_args: dict[str, Any], source: str = "the arguments") -> GeneralizedRCNN:
    """:func:`create_detector` from stored arguments (:data:`DETECTOR_ARGUMENTS`; ``backbone_kwargs`` apart).

    Raises:
        CheckpointError: arguments other than those, or backbone keywords a file may not set (``source`` names
            the file).
    """
    if not isinstance(model_args, dict) or set(model_args) - set(DETECTOR_ARGUMENTS):
        raise CheckpointError(f"{source} holds detector arguments other than {list(DETECTOR_ARGUMENTS)}")
    arguments = dict(model_args)
    backbone_kwargs = check_architecture_arguments(arguments.pop("backbone_kwargs", {}), source)
    return create_detector(**arguments, **backbone_kwargs)


@dataclass
class TrainedDetector:
    """A trained detector (eval mode) and the categories its labels stand for."""

    model: GeneralizedRCNN
    categories: CategoryMap

    @property
    def has_masks(self) -> bool:
        """Whether the detector predicts instance masks (Mask R-CNN)."""
        return self.model.roi_heads.has_mask()


def load_detector(checkpoint: Union[str, Path], device: torch.device = torch.device("cpu")) -> TrainedDetector:
    """The detector of a detection run checkpoint (``best.pth`` / ``last.pth`` or a run directory), rebuilt
    with every argument it was trained with, in eval mode.

    Raises:
        CheckpointError: not a detection run checkpoint.
        WeightsMismatchError: weights that do not fit the stored arguments.
    """
    run = RunCheckpoint.read(checkpoint, task="detection")
    model = build_detector(run.model_args, str(checkpoint))
    load_state_dict_into(model, run.weights(), run.path, entry="model")
    categories = run.entry("categories")
    return TrainedDetector(model.to(device).eval(), CategoryMap(tuple(categories["ids"]), tuple(categories["names"])))
