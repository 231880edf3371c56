"""BOAT model families, registered with timm on import, and model creation by name with a clear error."""
import difflib
from typing import Any

import timm
import torch.nn as nn

from . import boat_cswin, boat_swin  # noqa: F401  (registers the models)

__all__ = ["check_model_name", "create_model"]

SUGGESTIONS = 5  # close model names offered for an unknown one
CLOSE_ENOUGH = 0.5  # difflib similarity of a suggestion


def check_model_name(name: str) -> None:
    """Raises a ValueError naming close registered models when timm does not know ``name``."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=SUGGESTIONS, cutoff=CLOSE_ENOUGH)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `timm.list_models('boat*')` lists ours"
    raise ValueError(f"unknown model {name!r}{hint}")


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` for a checked ``name`` (ours are registered on import).

    Raises:
        ValueError: an unknown name (with suggestions) or keyword arguments the model does not take.
    """
    check_model_name(name)
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as error:  # an argument the model's constructor does not take
        raise ValueError(f"cannot build {name} with {kwargs}: {error}") from None
