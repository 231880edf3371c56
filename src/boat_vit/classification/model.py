"""Classifiers by name, with weights from any supported file, or rebuilt from a run checkpoint."""
from typing import Any, Optional

import torch.nn as nn

from ..engine import RunCheckpoint
from ..errors import Argument, CheckpointError, ConfigError
from ..models import check_architecture_arguments, check_model_name, create_model, download_pretrained, weights_filter
from ..weights import WeightsReport, classifier_keys, load_weights

__all__ = ["classifier_from_run", "create_classifier", "load_classifier", "run_entries"]

IMAGENET_CLASSES = 1000  # the class count of models created without a run checkpoint


def create_classifier(
    name: str,
    num_classes: int,
    weights: Optional[str] = None,
    reset_head: bool = False,
    allow_partial: bool = False,
    pretrained: bool = False,
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
        pretrained: Load the weights of the model's pretrained config instead, downloaded into timm's cache on
            first use as ``timm.create_model(name, pretrained=True)`` downloads them
            (:func:`~boat_vit.models.download_pretrained`); a classifier of another class count starts afresh,
            as with timm.
        **kwargs: Model keyword arguments (``img_size`` too, for models built for an input size).

    Returns:
        The model and what was loaded (``None`` without weights).

    Raises:
        ConfigError: both ``weights`` and ``pretrained``.
    """
    if pretrained:
        if weights is not None:
            raise ConfigError(Argument("pretrained", True), " and ", Argument("weights"),
                              " both give the weights; choose one")
        check_model_name(name)  # suggestions for a misspelt name before any download
        weights, reset_head = str(download_pretrained(name)), True
    model = create_model(name, num_classes=num_classes, **kwargs)
    report = (load_weights(model, weights, weights_filter(model), reset_head=reset_head, allow_partial=allow_partial)
              if weights is not None else None)
    return model, report


DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct")
CHANNELS = 3  # of the images a classifier takes


def run_entries(run: RunCheckpoint) -> tuple[list[str], dict]:
    """The class names and data configuration of a classification run checkpoint, checked.

    Raises:
        CheckpointError: either is missing or holds what a classifier cannot use (naming the entry).
    """
    from timm.data.transforms import str_to_interp_mode

    class_names, data_config = run.entry("class_names"), run.entry("data_config")
    if not isinstance(class_names, list) or not class_names or not all(isinstance(n, str) for n in class_names):
        raise run.damaged("class_names", f"is not a list of class names: {class_names!r}")
    if not isinstance(data_config, dict):
        raise run.damaged("data_config", f"is a {type(data_config).__name__}, not a data configuration")
    absent = [key for key in DATA_CONFIG_KEYS if key not in data_config]
    if absent:
        raise run.damaged("data_config", f"lacks {', '.join(absent)}")
    input_size, interpolation = data_config["input_size"], data_config["interpolation"]
    if not (isinstance(input_size, (tuple, list)) and len(input_size) == 3 and input_size[0] == CHANNELS
            and all(isinstance(n, int) and n >= 1 for n in input_size)):
        raise run.damaged("data_config", f"has an input size that is not (3, height, width): {input_size!r}")
    try:
        str_to_interp_mode(interpolation)
    except (KeyError, TypeError):
        raise run.damaged("data_config", f"has an unknown interpolation {interpolation!r}") from None
    for key in ("mean", "std"):
        value = data_config[key]
        if not (isinstance(value, (tuple, list)) and len(value) == CHANNELS
                and all(isinstance(v, (int, float)) for v in value)):
            raise run.damaged("data_config", f"has a {key} that is not {CHANNELS} numbers: {value!r}")
    if not isinstance(data_config["crop_pct"], (int, float)) or not 0 < data_config["crop_pct"] <= 1:
        raise run.damaged("data_config", f"has a crop_pct outside (0, 1]: {data_config['crop_pct']!r}")
    return class_names, data_config


def _rebuilt(run: RunCheckpoint) -> nn.Module:
    """The model of a classification run checkpoint, built from its stored arguments (exactly as trained)."""
    args = run.model_args
    class_names, _ = run_entries(run)
    if not isinstance(args.get("name"), str) or args.get("num_classes") != len(class_names):
        raise run.damaged("model_args", f"does not name a model for the {len(class_names)} classes of the run: "
                                        f"{args!r}")
    kwargs = check_architecture_arguments(args.get("kwargs", {}), str(run.path))
    try:
        return create_model(args["name"], num_classes=args["num_classes"], **kwargs)
    except ConfigError as error:
        raise run.damaged("model_args", f"cannot make a model: {error}") from None


def classifier_from_run(run: RunCheckpoint, use_ema: bool = False) -> tuple[nn.Module, list[str], dict]:
    """The classifier of a classification run checkpoint already read, rebuilt with every argument it was
    trained with (its weights, or its EMA weights with ``use_ema``), with its class names and data config.

    Raises:
        CheckpointError: the checkpoint does not say which model, classes or data configuration it holds.
        WeightsMismatchError: weights that do not fit the stored arguments.
    """
    model = _rebuilt(run)
    run.load_into(model, ema=use_ema)
    class_names, data_config = run_entries(run)
    return model, class_names, data_config


def load_classifier(
    checkpoint: Optional[str] = None,
    model_name: Optional[str] = None,
    weights: Optional[str] = None,
    use_ema: bool = False,
    pretrained: bool = False,
) -> tuple[nn.Module, list[str], dict]:
    """A classifier in eval mode with its class names and data config.

    Either a classification run ``checkpoint`` (the model is rebuilt with every argument it was trained with;
    ``use_ema`` picks the EMA weights), or ``model_name`` with a ``weights`` file holding a whole classifier
    (e.g. released BOAT weights; ImageNet indices as class names) or with ``pretrained`` (the weights of its
    pretrained config, downloaded into timm's cache on first use).

    Raises:
        ConfigError: both or neither of ``checkpoint`` and ``model_name``, or a model without weights.
        CheckpointError: not a classification run checkpoint, or a file without a classifier.
        WeightsMismatchError: weights that do not fit.
    """
    from timm.data import resolve_data_config

    if checkpoint is not None:
        if model_name is not None or weights is not None or pretrained:
            raise ConfigError(Argument("checkpoint"), " brings its own model and weights; drop ",
                              Argument("model_name"), ", ", Argument("weights"), " and ", Argument("pretrained", True))
        model, class_names, data_config = classifier_from_run(RunCheckpoint.read(checkpoint, task="classification"),
                                                              use_ema)
    elif model_name is not None:
        check_model_name(model_name)
        if weights is None and not pretrained:
            raise ConfigError(Argument("model_name"), f" {model_name} needs its weights (", Argument("weights"),
                              " or ", Argument("pretrained", True), "): a model with random weights predicts nothing")
        model, report = create_classifier(model_name, IMAGENET_CLASSES, weights, pretrained=pretrained)
        if classifier_keys(model) & set(report.initial):
            raise CheckpointError(f"{report.path} holds no classifier for {model_name} (a backbone only?): a model "
                                  "with a random classifier predicts nothing")
        class_names = [str(i) for i in range(model.num_classes)]
        data_config = resolve_data_config(model=model)
    else:
        raise ConfigError("give a training checkpoint, or a model name (and usually its weights file)")
    return model.eval(), class_names, data_config
