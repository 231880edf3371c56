"""Building classifiers by name for the command line: clear errors, local weights, head re-initialisation."""
import difflib
from pathlib import Path
from typing import Any, Optional

import timm
import torch
import torch.nn as nn

__all__ = ["create_classifier", "load_initial_weights", "check_model_name"]

SUGGESTIONS = 5


def check_model_name(name: str) -> None:
    """Raises a ValueError naming close registered models when ``name`` is unknown to timm."""
    import boat_vit.models  # noqa: F401  (registers the BOAT models)

    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=SUGGESTIONS, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `timm.list_models('boat*')` lists ours"
    raise ValueError(f"unknown model {name!r}{hint}")


def create_classifier(
    name: str,
    num_classes: int,
    pretrained_file: Optional[str] = None,
    **kwargs: Any,
) -> nn.Module:
    """``timm.create_model`` with a checked name; ``pretrained_file`` loads local (e.g. released) weights.

    The weights go through the model's checkpoint filter, so released BOAT files load as they are.
    """
    check_model_name(name)
    if pretrained_file is not None:
        if not Path(pretrained_file).is_file():
            raise FileNotFoundError(f"pretrained weights not found: {pretrained_file}")
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(pretrained_file)))
    return timm.create_model(name, num_classes=num_classes, **kwargs)


def _head_keys(model: nn.Module) -> set[str]:
    classifier = model.get_classifier()
    prefix = next(name for name, module in model.named_modules() if module is classifier)
    return {f"{prefix}.{key}" for key in classifier.state_dict()}


def load_initial_weights(model: nn.Module, path: str, reset_head: bool = False) -> list[str]:
    """Loads a training checkpoint (``model`` entry) or a plain state dict / safetensors file into ``model``.

    A classifier of another size is an error unless ``reset_head``, which keeps the model's fresh head.

    Returns:
        The names of parameters left at their initial values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"initial checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model", state)
    own = model.state_dict()
    head = _head_keys(model)
    mismatched = sorted(k for k in head if k in state and state[k].shape != own[k].shape)
    if mismatched:
        if not reset_head:
            classes = state[mismatched[0]].shape[0]
            raise ValueError(
                f"{path} has a {classes}-class head but the model has {model.num_classes} classes; "
                "pass --reset-head to start the classifier afresh"
            )
        state = {k: v for k, v in state.items() if k not in head}
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{path} does not fit the model: unexpected keys {result.unexpected_keys[:8]}")
    return list(result.missing_keys)
