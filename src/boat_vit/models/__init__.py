"""BOAT model families, registered with timm on import; model creation by name with a clear error, the
conversion of weights files to a model's layout, and pretrained weights by download."""
import difflib
import importlib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Mapping, Optional

import timm
import torch.nn as nn
from timm.models import get_arch_pretrained_cfgs, split_model_name_tag

from ..errors import ConfigError, first_line
from ..weights import FilterFn
from . import boat_cswin, boat_swin
from ._metadata import BOAT_CITATION, BOAT_PAPER_CFG
from ._pretrained import download_pretrained
from .boat_cswin import BoatCSWin
from .boat_swin import BoatSwinTransformer

__all__ = ["ARCHITECTURE_ARGUMENTS", "BOAT_CITATION", "BOAT_PAPER_CFG", "building", "check_architecture_arguments",
           "check_model_name", "create_model", "download_pretrained", "weights_filter"]

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
# What a model's constructor raises for arguments it cannot build (a size of 0, heads that do not divide the
# width, lists of different lengths, ...): timm and torch use all of these.
MODEL_ARGUMENT_ERRORS = (TypeError, ValueError, ArithmeticError, AssertionError, IndexError, KeyError, RuntimeError)


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
    """Raises a :class:`~boat_vit.errors.ConfigError` for a name timm does not know (naming close registered
    models), or a pretrained tag (``name.tag``) the architecture does not have."""
    if not isinstance(name, str):
        raise ConfigError(f"a model name must be a string, got {name!r}")
    architecture, tag = split_model_name_tag(name)
    if timm.is_model(architecture):
        tags = sorted(get_arch_pretrained_cfgs(architecture))
        if tag and name not in tags:
            raise ConfigError(f"unknown pretrained tag {tag!r} in {name!r}; {architecture} has "
                              f"{', '.join(tags) or 'none'}")
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=SUGGESTIONS, cutoff=CLOSE_ENOUGH)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `timm.list_models('boat*')` lists ours"
    raise ConfigError(f"unknown model {name!r}{hint}")


def create_model(name: str, img_size: Optional[int] = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` for a checked ``name`` (ours are registered on import).

    Args:
        name: timm model name.
        img_size: Input size for models built for one (a Swin's windows, a ViT's position embedding); models
            that take any size (convolutional networks) are built without it.
        **kwargs: Model keyword arguments.

    Raises:
        ConfigError: an unknown name (with suggestions), or keyword arguments the model does not take or
            cannot be built with (a width of 0, ...).
    """
    check_model_name(name)
    with building(name, kwargs if img_size is None else dict(kwargs, img_size=img_size)):
        if img_size is not None:
            try:
                return timm.create_model(name, img_size=img_size, **kwargs)
            except TypeError:  # a model of any input size
                pass
        return timm.create_model(name, **kwargs)


@contextmanager
def building(name: str, kwargs: Mapping[str, Any]) -> Iterator[None]:
    """Turns what building model ``name`` with ``kwargs`` raises for arguments it cannot take into a
    :class:`~boat_vit.errors.ConfigError` naming them; the warnings of a failed build (a tensor of size 0,
    ...) are dropped, those of a model that was built are passed on."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except MODEL_ARGUMENT_ERRORS as error:
            arguments = ", ".join(f"{key}={value!r}" for key, value in kwargs.items())
            raise ConfigError(f"cannot build {name} with {arguments or 'its defaults'}: {first_line(error)}") from None
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


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
