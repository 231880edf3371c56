"""Semantic segmentation on BOAT backbones: UperNet (segmentation_models_pytorch), ADE20K-style data, the
recipe, the training task, evaluation (mIoU, sliding window, multi-scale + flip) and prediction."""
from .evaluate import evaluate_segmentation, predict_images
from .model import BoatUPerNet, Segmenter, load_backbone_weights, load_segmenter
from .recipes import PRESETS, SegTrainConfig, resolve_seg_config
from .train import SegmentationTask, train_segmentation

__all__ = ["PRESETS", "BoatUPerNet", "SegTrainConfig", "SegmentationTask", "Segmenter", "evaluate_segmentation",
           "load_backbone_weights", "load_segmenter", "predict_images", "resolve_seg_config", "train_segmentation"]
