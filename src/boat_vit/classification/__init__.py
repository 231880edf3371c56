"""Image classification with BOAT (and any timm) models: recipes, data, the training task, evaluation and
prediction."""
from .evaluate import evaluate_classifier, predict
from .model import create_classifier, load_classifier
from .recipes import PRESETS, TrainConfig, resolve_config
from .train import ClassificationTask, train_classifier

__all__ = ["PRESETS", "ClassificationTask", "TrainConfig", "create_classifier", "evaluate_classifier",
           "load_classifier", "predict", "resolve_config", "train_classifier"]
