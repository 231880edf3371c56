"""Object detection and instance segmentation on BOAT backbones: torchvision's Mask R-CNN / Faster R-CNN with an
FPN over any timm backbone, COCO-format data through pycocotools, COCOeval box and mask AP, prediction
pictures, the ``digit-det`` task generated from scikit-learn's digits, and training on the engine's skeleton."""
from .data import AnnotationError, AnnotationReport, CategoryMap, CocoDetection, CocoSplit, resolve_coco_split
from .evaluate import DetectionScores, evaluate_detection, format_scores
from .model import TimmFeaturePyramid, TrainedDetector, create_detector, load_backbone_weights, load_detector
from .predict import draw_detections, predict_images
from .recipes import PRESETS, DetTrainConfig, resolve_det_config
from .tasks import DigitDetConfig, prepare_digit_det, write_digit_det
from .train import DetectionTask, train_detector

__all__ = ["PRESETS", "AnnotationError", "AnnotationReport", "CategoryMap", "CocoDetection", "CocoSplit",
           "DetTrainConfig", "DetectionScores", "DetectionTask", "DigitDetConfig", "TimmFeaturePyramid",
           "TrainedDetector", "create_detector", "draw_detections", "evaluate_detection", "format_scores",
           "load_backbone_weights", "load_detector", "predict_images", "prepare_digit_det", "resolve_coco_split",
           "resolve_det_config", "train_detector", "write_digit_det"]
