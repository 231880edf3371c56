"""BOAT model families, registered with timm on import; model creation by name with a clear error, and the
conversion of weights files to a model's layout."""
import difflib
import importlib
from typing import Any, Mapping, Optional

import timm
import torch.nn as nn

from ..weights import FilterFn
from . import boat_cswin, boat_swin
from .boat_cswin import BoatCSWin
from .boat_swin import BoatSwinTransformer

__all__ = ["ARCHITECTURE_ARGUMENTS", "check_architecture_arguments", "check_model_name", "create_model",
           "weights_filter"]

# The one conversion of each family: its filter function (timm's convention).
FAMILY_FILTERS: tuple[tuple[type, FilterFn], ...] = (
    (BoatSwinTransformer, boat_swin.checkpoint_filter_fn),
    (BoatCSWin, boat_cswin.checkpoint_filter_fn),
)

SUGGESTIONS = 5  # close model names offered for an unknown one
CLOSE_ENOUGH = 0.5  # difflib similarity of a suggestion
# Model keyword arguments a file (a training checkpoint) may set: they shape the architecture and nothing else,
# so a file can never make model creation download weights or open another file.
ARCHITECTURE_ARGUMENTS = frozenset({
    "img_size", "patch_size", "in_chans", "embed_dim", "depths", "num_heads", "window_size", "split_size",
    "mlp_ratio", "qkv_bias", "always_partition", "strict_img_size", "dynamic_img_size", "global_pool",
    "drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate", "fsla", "fsla_stages", "fsla_group_size",
    "fsla_overlap", "fsla_qk_scale", "fsla_grouping", "fsla_attention",
})


def check_architecture_arguments(kwargs: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``kwargs`` read from ``source`` (a file), checked against :data:`ARCHITECTURE_ARGUMENTS`.

    Raises:
        ValueError: ``kwargs`` is not a mapping, or names an argument outside the allowlist.
    """
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"{source} holds model arguments that are not a mapping: {kwargs!r}")
    refused = sorted(str(key) for key in kwargs if key not in ARCHITECTURE_ARGUMENTS)
    if refused:
        raise ValueError(f"{source} sets model arguments {refused}, which a file may not set (allowed: architecture "
                         "arguments such as embed_dim, depths, img_size)")
    return dict(kwargs)


def check_model_name(name: str) -> None:
    """Raises a ValueError naming close registered models when timm does not know ``name``."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=SUGGESTIONS, cutoff=CLOSE_ENOUGH)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `timm.list_models('boat*')` lists ours"
    raise ValueError(f"unknown model {name!r}{hint}")


def create_model(name: str, img_size: Optional[int] = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` for a checked ``name`` (ours are registered on import).

    Args:
        name: timm model name.
        img_size: Input size for models built for one (a Swin's windows, a ViT's position embedding); models
            that take any size (convolutional networks) are built without it.
        **kwargs: Model keyword arguments.

    Raises:
        ValueError: an unknown name (with suggestions) or keyword arguments the model does not take.
    """
    check_model_name(name)
    if img_size is not None:
        try:
            return timm.create_model(name, img_size=img_size, **kwargs)
        except TypeError:  # a model of any input size
            pass
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as error:  # an argument the model's constructor does not take
        raise ValueError(f"cannot build {name} with {kwargs}: {error}") from None


def weights_filter(model: nn.Module) -> Optional[FilterFn]:
    """The filter function that converts weights files to ``model``'s layout, for
    :func:`~boat_vit.weights.load_weights`.

    A BOAT model's family filter; for another timm model the ``checkpoint_filter_fn`` of the module that
    registers its architecture (its pretrained config's), where it has one; ``None`` otherwise.
    """
    for family, filter_fn in FAMILY_FILTERS:
        if isinstance(model, family):
            return filter_fn
    architecture = getattr(model, "pretrained_cfg", {}).get("architecture")
    if not architecture or not timm.is_model(architecture):
        return None
    module = importlib.import_module(timm.models.model_entrypoint(architecture).__module__)
    return getattr(module, "checkpoint_filter_fn", None)
