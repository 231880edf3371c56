"""Semantic segmentation on BOAT backbones: UperNet (segmentation_models_pytorch), ADE20K-style data,
training, evaluation (mIoU, sliding window, multi-scale + flip) and prediction."""
from .evaluate import evaluate_segmentation, predict_images
from .model import BoatUPerNet, Segmenter, load_backbone_weights, load_segmenter
from .train import SegTrainConfig, resolve_seg_config, train_segmentation

__all__ = ["BoatUPerNet", "SegTrainConfig", "Segmenter", "evaluate_segmentation",
           "load_backbone_weights", "load_segmenter", "predict_images", "resolve_seg_config", "train_segmentation"]
