"""Classifiers by name, with weights from any supported file, or restored from a training checkpoint."""
from typing import Any, Optional

import torch.nn as nn

from ..files import read_checkpoint
from ..models import check_architecture_arguments, check_model_name, create_model, weights_filter
from ..weights import WeightsReport, load_state_dict_into, load_weights

__all__ = ["create_classifier", "load_classifier"]

IMAGENET_CLASSES = 1000  # the class count of models created without a training checkpoint


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
            downloaded, a training checkpoint, safetensors, a state dict).
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


def load_classifier(
    checkpoint: Optional[str] = None,
    model_name: Optional[str] = None,
    weights: Optional[str] = None,
    use_ema: bool = False,
) -> tuple[nn.Module, list[str], dict]:
    """A classifier in eval mode with its class names and data config.

    Either a boat-vit training ``checkpoint`` (model name, classes and weights inside; ``use_ema`` picks the
    EMA weights), or ``model_name`` with a ``weights`` file (e.g. released BOAT weights; ImageNet indices
    as class names).
    """
    from timm.data import resolve_data_config

    if checkpoint is not None:
        if model_name is not None or weights is not None:
            raise ValueError("--checkpoint brings its own model and weights; drop --model and --pretrained-file")
        state = read_checkpoint(checkpoint)
        if not isinstance(state, dict) or not {"class_names", "model_name", "model", "data_config"} <= set(state):
            raise ValueError(f"{checkpoint} is not a classification training checkpoint (written by `boat-vit train`)")
        class_names = state["class_names"]
        model_kwargs = check_architecture_arguments(state.get("model_kwargs", {}), checkpoint)
        model = create_model(state["model_name"], num_classes=len(class_names), **model_kwargs)
        entry = "ema" if use_ema else "model"
        if state.get(entry) is None:
            raise ValueError(f"{checkpoint} has no EMA weights (the run did not use --ema-decay)")
        state_dict = {k.removeprefix("module."): v for k, v in state[entry].items()}
        load_state_dict_into(model, state_dict, checkpoint, entry=entry)
        data_config = state["data_config"]
    elif model_name is not None:
        check_model_name(model_name)
        if weights is None:
            raise ValueError(f"--model {model_name} needs its weights (--pretrained-file): a model with random "
                             "weights predicts nothing")
        model, _ = create_classifier(model_name, IMAGENET_CLASSES, weights)
        class_names = [str(i) for i in range(model.num_classes)]
        data_config = resolve_data_config(model=model)
    else:
        raise ValueError("give a training checkpoint, or a model name (and usually its weights file)")
    return model.eval(), class_names, data_config
