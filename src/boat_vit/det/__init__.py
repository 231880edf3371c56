"""Object detection and instance segmentation on BOAT backbones: torchvision's Mask R-CNN / Faster R-CNN with an
FPN over any timm backbone, COCO-format data through pycocotools, COCOeval box and mask AP, prediction
pictures, and the ``digit-det`` task generated from scikit-learn's digits."""
from .data import AnnotationError, AnnotationReport, CategoryMap, CocoDetection, CocoSplit, resolve_coco_split
from .evaluate import DetectionScores, evaluate_detection, format_scores
from .model import TimmFeaturePyramid, create_detector
from .predict import draw_detections, predict_images
from .tasks import DigitDetConfig, prepare_digit_det, write_digit_det

__all__ = ["AnnotationError", "AnnotationReport", "CategoryMap", "CocoDetection", "CocoSplit", "DetectionScores",
           "DigitDetConfig", "TimmFeaturePyramid", "create_detector", "draw_detections", "evaluate_detection",
           "format_scores", "predict_images", "prepare_digit_det", "resolve_coco_split", "write_digit_det"]
