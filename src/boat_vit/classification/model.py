"""Classifiers by name, with weights from any supported file, or rebuilt from a run checkpoint."""
from typing import Any, Optional

import torch.nn as nn

from ..engine import RunCheckpoint
from ..errors import Argument, CheckpointError, ConfigError
from ..models import check_architecture_arguments, check_model_name, create_model, weights_filter
from ..weights import WeightsReport, classifier_keys, load_state_dict_into, load_weights

__all__ = ["create_classifier", "load_classifier"]

IMAGENET_CLASSES = 1000  # the class count of models created without a run checkpoint


def create_classifier(
    name: str,
    num_classes: int,
    weights: Optional[str] = None,
    reset_head: bool = False,
    allow_partial: bool = False,
    **kwargs: Any,
) -> tuple[nn.Module, Optional[WeightsReport]]:
    """A timm classifier by (checked) name, optionally filled from a weights file.

    Args:
        name: timm model name.
        num_classes: Classes of the head.
        weights: Any file :func:`boat_vit.weights.load_weights` reads (released BOAT weights as
            downloaded, a run checkpoint, safetensors, a state dict).
        reset_head: Keep the fresh classifier where the file's has another number of classes.
        allow_partial: Accept a file that gives less than half of the model's weights.
        **kwargs: Model keyword arguments (``img_size`` too, for models built for an input size).

    Returns:
        The model and what was loaded (``None`` without ``weights``).
    """
    model = create_model(name, num_classes=num_classes, **kwargs)
    report = (load_weights(model, weights, weights_filter(model), reset_head=reset_head, allow_partial=allow_partial)
              if weights is not None else None)
    return model, report


def _rebuilt(checkpoint: RunCheckpoint) -> nn.Module:
    """The model of a classification run checkpoint, built from its stored arguments (exactly as trained)."""
    args = checkpoint.model_args
    class_names = checkpoint.entry("class_names")
    if not isinstance(class_names, list) or not class_names:
        raise CheckpointError(f"{checkpoint.path} holds no class names (damaged?)")
    if not isinstance(args.get("name"), str) or args.get("num_classes") != len(class_names):
        raise CheckpointError(f"{checkpoint.path} holds model arguments that do not name a model for its "
                              f"{len(class_names)} classes: {args!r}")
    kwargs = check_architecture_arguments(args.get("kwargs", {}), str(checkpoint.path))
    return create_model(args["name"], num_classes=args["num_classes"], **kwargs)


def load_classifier(
    checkpoint: Optional[str] = None,
    model_name: Optional[str] = None,
    weights: Optional[str] = None,
    use_ema: bool = False,
) -> tuple[nn.Module, list[str], dict]:
    """A classifier in eval mode with its class names and data config.

    Either a classification run ``checkpoint`` (the model is rebuilt with every argument it was trained with;
    ``use_ema`` picks the EMA weights), or ``model_name`` with a ``weights`` file holding a whole classifier
    (e.g. released BOAT weights; ImageNet indices as class names).

    Raises:
        ConfigError: both or neither of ``checkpoint`` and ``model_name``, or a model without weights.
        CheckpointError: not a classification run checkpoint, or a file without a classifier.
        WeightsMismatchError: weights that do not fit.
    """
    from timm.data import resolve_data_config

    if checkpoint is not None:
        if model_name is not None or weights is not None:
            raise ConfigError(Argument("checkpoint"), " brings its own model and weights; drop ",
                              Argument("model_name"), " and ", Argument("weights"))
        run = RunCheckpoint.read(checkpoint, task="classification")
        model = _rebuilt(run)
        entry = "ema" if use_ema else "model"
        load_state_dict_into(model, run.weights(ema=use_ema), checkpoint, entry=entry)
        class_names, data_config = run.entry("class_names"), run.entry("data_config")
        if not isinstance(data_config, dict) or not {"input_size", "interpolation", "mean", "std", "crop_pct"} \
                <= set(data_config):
            raise CheckpointError(f"{checkpoint} holds an incomplete data configuration: {data_config!r}")
    elif model_name is not None:
        check_model_name(model_name)
        if weights is None:
            raise ConfigError(Argument("model_name"), f" {model_name} needs its weights (", Argument("weights"),
                              "): a model with random weights predicts nothing")
        model, report = create_classifier(model_name, IMAGENET_CLASSES, weights)
        if classifier_keys(model) & set(report.initial):
            raise CheckpointError(f"{weights} holds no classifier for {model_name} (a backbone only?): a model "
                                  "with a random classifier predicts nothing")
        class_names = [str(i) for i in range(model.num_classes)]
        data_config = resolve_data_config(model=model)
    else:
        raise ConfigError("give a training checkpoint, or a model name (and usually its weights file)")
    return model.eval(), class_names, data_config
