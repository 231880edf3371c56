"""Safe loading of checkpoint files, the released BOAT ones included.

The released checkpoints are pickles that hold more than tensors: the BOAT-Swin ones are
``{'model': state_dict, 'config': <yacs CfgNode>, 'optimizer': ..., ...}``, the BOAT-CSWin ones are timm
``CheckpointSaver`` files ``{'state_dict': ..., 'state_dict_ema': ..., 'args': <argparse.Namespace>, ...}``.
They are read with ``torch.load(weights_only=True)``, which never imports or runs code named in a pickle:
besides tensors and plain containers it accepts only the classes allowlisted here, read as plain data.

* ``yacs.config.CfgNode`` (a ``dict`` subclass) becomes a :class:`collections.OrderedDict`; yacs is never
  imported.
* ``argparse.Namespace`` stays a Namespace (a plain attribute bag; timm's own loader allows it too).

Importing this module registers both with :func:`torch.serialization.add_safe_globals`, so timm's loaders
(``timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=PATH))`` and
``checkpoint_path=PATH``) read the released files as they are. Any other class or function in a pickle
(``os.system``, ``yacs.config.load_cfg``, a training script's class, ...) is refused with
:class:`UnsafeCheckpointError`.
"""
import argparse
import logging
import os
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import safetensors.torch
import torch
import torch.nn as nn
from timm.models import clean_state_dict

__all__ = [
    "STATE_DICT_KEYS",
    "CheckpointError",
    "UnsafeCheckpointError",
    "fill_missing_from_model",
    "load_checkpoint_file",
    "load_state_dict_file",
    "register_layout_conversion",
    "select_state_dict",
]

_logger = logging.getLogger(__name__)

# where training checkpoints keep their weights, in order of preference (timm's loader prefers EMA weights too)
STATE_DICT_KEYS: tuple[str, ...] = ("state_dict_ema", "model_ema", "state_dict", "model")
SAFETENSORS_SUFFIX = ".safetensors"
YACS_CFG_NODE = "yacs.config.CfgNode"

PathLike = Union[str, os.PathLike]
StateDict = dict[str, torch.Tensor]


class CheckpointError(ValueError):
    """A checkpoint file that does not hold what was asked for."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that names code outside the plain data that loading allows."""


class _PlainConfigNode:
    """Stand-in for ``yacs.config.CfgNode`` in pickles: every node is created as a plain ``OrderedDict``.

    The weights-only unpickler creates a pickled object as ``cls.__new__(cls)`` and then fills in its items
    and attributes; returning an ``OrderedDict`` keeps all of it plain data.
    """

    def __new__(cls, *args: Any) -> OrderedDict:
        return OrderedDict()


SAFE_GLOBALS: list[Any] = [argparse.Namespace, (_PlainConfigNode, YACS_CFG_NODE)]


def _allow_safe_globals() -> None:
    """(Re-)registers :data:`SAFE_GLOBALS`.

    Done before every load: a ``torch.serialization.safe_globals([...])`` context (timm's loader uses one
    for ``argparse.Namespace``) removes its globals on exit even where they were registered before.
    """
    torch.serialization.add_safe_globals(SAFE_GLOBALS)


_allow_safe_globals()


def load_checkpoint_file(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Any:
    """Loads a ``torch.save`` or safetensors file without running any code from it.

    Args:
        path: The file. ``.safetensors`` files are read with safetensors, anything else with
            ``torch.load(weights_only=True)`` and the plain-data stand-ins of this module.
        map_location: Where to put the tensors.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        UnsafeCheckpointError: the pickle names a class or function outside the allowed plain data.
        CheckpointError: the file cannot be read as a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == SAFETENSORS_SUFFIX:
        return safetensors.torch.load_file(path, device=str(map_location))
    _allow_safe_globals()
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        names = _unsafe_globals(path)
        if names:
            raise UnsafeCheckpointError(
                f"refusing to load {path}: its pickle needs {', '.join(sorted(names))}, which is neither a "
                "tensor nor plain data; checkpoint loading never imports or runs code named in a file"
            ) from err
        raise CheckpointError(f"cannot read {path} as a checkpoint: {str(err).splitlines()[0]}") from err
    except Exception as err:  # not a torch.save file: bad magic number, truncated zip, garbage pickle opcodes, ...
        raise CheckpointError(f"cannot read {path} as a checkpoint: {err}") from err


def _unsafe_globals(path: Path) -> list[str]:
    """The globals of a zip-format ``torch.save`` file that loading refuses (empty if it cannot tell)."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (ValueError, RuntimeError, pickle.UnpicklingError):
        return []


def select_state_dict(checkpoint: Any, key: Optional[str] = None) -> tuple[StateDict, str]:
    """Picks the weights out of a loaded checkpoint.

    Args:
        checkpoint: A loaded file: a training checkpoint with its weights under one of
            :data:`STATE_DICT_KEYS`, or a plain state dict.
        key: The entry to use. ``None`` takes the first of :data:`STATE_DICT_KEYS` that holds a state dict
            (EMA weights first, as timm does) or, with none of them, the checkpoint itself; ``""`` asks for
            the checkpoint itself.

    Returns:
        The state dict (``module.`` / ``_orig_mod.`` wrapper prefixes removed) and the key used (``""`` for
        the checkpoint itself).

    Raises:
        CheckpointError: ``key`` holds no state dict, or what was picked is not a state dict.
    """
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"expected a checkpoint dict, got {type(checkpoint).__name__}")
    found = [k for k in STATE_DICT_KEYS if isinstance(checkpoint.get(k), Mapping)]
    if key is None:
        key = found[0] if found else ""
    if key and not isinstance(checkpoint.get(key), Mapping):
        raise CheckpointError(
            f"checkpoint has no state dict under {key!r}; state dicts found under: {found or 'none'} "
            f"(top-level keys: {sorted(map(str, checkpoint))})"
        )
    state_dict = checkpoint[key] if key else checkpoint
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        where = f"entry {key!r}" if key else "checkpoint"
        raise CheckpointError(
            f"the {where} is not a state dict: {sorted(map(str, not_tensors))[:5]} hold no tensors "
            f"(state dicts found under: {found or 'none'})"
        )
    _logger.debug("Using the %s as state dict (%d tensors)", f"{key!r} entry" if key else "checkpoint", len(state_dict))
    return clean_state_dict(dict(state_dict)), key


def load_state_dict_file(
    path: PathLike, key: Optional[str] = None, map_location: Union[str, torch.device] = "cpu"
) -> tuple[StateDict, str]:
    """Loads the state dict of a checkpoint file safely; see :func:`select_state_dict` for ``key``.

    To load a chosen entry through timm (which itself picks EMA weights first), pass the result on:
    ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(state_dict=state_dict))``.

    Returns:
        The state dict and the key it was found under (``""``: the whole file).
    """
    state_dict, used = select_state_dict(load_checkpoint_file(path, map_location), key)
    _logger.info("Loaded the state dict %s %s", f"under {used!r} of" if used else "that is the whole of", path)
    return state_dict, used


def fill_missing_from_model(
    state_dict: dict[str, Any], model: nn.Module, belongs: Callable[[str], bool], description: str
) -> list[str]:
    """Keeps the model's own weights for a branch that a checkpoint lacks entirely.

    Lets a plain Swin/CSWin checkpoint load into a BOAT model strictly: when none of the model's keys for
    which ``belongs(key)`` holds is in ``state_dict``, the model's current tensors are added for all of
    them and listed in a warning. A checkpoint holding some of them is left as it is (a strict load then
    reports the rest).

    Returns:
        The keys added.
    """
    own = model.state_dict()
    wanted = [k for k in own if belongs(k)]
    if not wanted or any(k in state_dict for k in wanted):
        return []
    state_dict.update((k, own[k]) for k in wanted)
    _logger.warning(
        "The checkpoint has no %s weights; these %d keys keep their fresh initialisation: %s",
        description,
        len(wanted),
        ", ".join(wanted),
    )
    return wanted


class _LayoutConversionHook:
    """``load_state_dict`` pre-hook converting a foreign key layout (see :func:`register_layout_conversion`)."""

    def __init__(
        self,
        filter_fn: Callable[[dict[str, Any], nn.Module], dict[str, Any]],
        is_foreign: Callable[[Mapping[str, Any]], bool],
    ):
        self.filter_fn = filter_fn
        self.is_foreign = is_foreign

    def __call__(self, module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        own = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not self.is_foreign(own):
            return
        for k in [k for k in state_dict if k.startswith(prefix)]:
            del state_dict[k]
        state_dict.update((prefix + k, v) for k, v in self.filter_fn(own, module).items())
        _logger.info("Converted a released-layout state dict for %s", type(module).__name__)


def register_layout_conversion(
    model: nn.Module,
    filter_fn: Callable[[dict[str, Any], nn.Module], dict[str, Any]],
    is_foreign: Callable[[Mapping[str, Any]], bool],
) -> torch.utils.hooks.RemovableHandle:
    """Makes ``model.load_state_dict`` accept a foreign (e.g. released) key layout too.

    timm's ``create_model(..., checkpoint_path=PATH)`` loads with ``model.load_state_dict`` and no filter
    function; with this hook a state dict for which ``is_foreign`` holds is first converted by
    ``filter_fn(state_dict, model)``. State dicts in the model's own layout load unchanged.
    """
    return model.register_load_state_dict_pre_hook(_LayoutConversionHook(filter_fn, is_foreign))
