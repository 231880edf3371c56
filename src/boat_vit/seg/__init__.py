"""Semantic segmentation on BOAT backbones: UperNet (segmentation_models_pytorch), ADE20K-style data,
training, evaluation (mIoU, sliding window, multi-scale + flip) and prediction."""
from .model import BackboneLoadReport, BoatUPerNet, load_backbone_weights

__all__ = ["BackboneLoadReport", "BoatUPerNet", "load_backbone_weights"]
