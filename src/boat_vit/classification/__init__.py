"""Image classification with BOAT (and any timm) models: data, training, evaluation and prediction."""
from .evaluate import evaluate_classifier, predict
from .model import create_classifier, load_classifier
from .train import PRESETS, TrainConfig, resolve_config, train_classifier

__all__ = ["PRESETS", "TrainConfig", "create_classifier", "evaluate_classifier", "load_classifier", "predict",
           "resolve_config", "train_classifier"]
