"""Checkpoint files, the one place that reads and writes them: safe loading (the released BOAT files
included), choosing the state dict, converting it with the model's filter, loading it into a model, and
atomic writing (``torch.save`` and safetensors).

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
import sys
import tempfile
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
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
    "WeightsReport",
    "atomic_write",
    "check_enough_loaded",
    "checkpoint_filter_for",
    "convert_checkpoint",
    "fill_missing_from_model",
    "filter_state_dict",
    "load_checkpoint_file",
    "load_state_dict_file",
    "load_weights",
    "register_layout_conversion",
    "save_safetensors",
    "select_state_dict",
]

_logger = logging.getLogger(__name__)

# where training checkpoints keep their weights, in order of preference (timm's loader prefers EMA weights too)
STATE_DICT_KEYS: tuple[str, ...] = ("state_dict_ema", "model_ema", "state_dict", "model")
SAFETENSORS_SUFFIX = ".safetensors"
TEMPORARY_SUFFIX = ".tmp"  # of the files atomic_write renames into place
KEYS_SHOWN = 5  # keys quoted in an error message
# A file must give at least this share of a model's weights (in elements, the classifier aside) unless a
# partial load is asked for: a file for another model fails instead of leaving the model at random weights.
MIN_LOADED_FRACTION = 0.5
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
        try:
            return safetensors.torch.load_file(path, device=str(map_location))
        except Exception as err:  # safetensors raises its own error types for a bad header or truncated data
            raise CheckpointError(f"cannot read {path} as a safetensors file: {err}") from err
    _allow_safe_globals()
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not the user's concern
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        names = _unsafe_globals(path)
        if names:
            raise UnsafeCheckpointError(
                f"refusing to load {path}: its pickle needs {', '.join(sorted(names))}, which is neither a "
                "tensor nor plain data; checkpoint loading never imports or runs code named in a file"
            ) from err
        raise UnsafeCheckpointError(
            f"refusing to load {path}: its pickle holds more than tensors and plain data ({_unpickler_detail(err)}); "
            "checkpoint loading never imports or runs code named in a file"
        ) from err
    except Exception as err:  # not a torch.save file: bad magic number, truncated zip, garbage pickle opcodes, ...
        raise CheckpointError(f"cannot read {path} as a checkpoint: {_first_line(err)}") from err


def _first_line(error: BaseException) -> str:
    """The first non-empty line of an error message (``type(error)`` where it has none)."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def _unpickler_detail(error: BaseException) -> str:
    """What torch's weights-only unpickler refused, without its advice to load the file unsafely."""
    lines = [line.strip() for line in str(error).splitlines()]
    return next((line.rstrip(".") for line in lines if "GLOBAL" in line or line.startswith("Unsupported")),
                "an object it cannot read as data")


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
    try:
        state_dict, used = select_state_dict(load_checkpoint_file(path, map_location), key)
    except CheckpointError as error:
        if str(path) in str(error):
            raise
        raise CheckpointError(f"{path}: {error}") from None
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


# ---- writing ---------------------------------------------------------------------------------------------


class _WriteErrorRecorder:
    """A file wrapper that remembers the operating-system error of a failed write.

    ``torch.save`` reports a failed write (a full disk) as a ``RuntimeError`` without the cause; the
    recorded ``OSError`` names it (``errno.ENOSPC``).
    """

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


def atomic_write(path: PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Writes ``path`` all at once: a reader sees the old file or the new one, never half of one.

    ``write(file)`` fills a temporary file created exclusively (never through a planted link) in the same
    folder; the file is flushed to disk and renamed over ``path``. On any error the temporary file is removed.

    Returns:
        ``path``.

    Raises:
        OSError: the file cannot be written (``errno.ENOSPC`` for a full disk, also where the writer
            reported it otherwise).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    try:
        with os.fdopen(fd, mode) as file:
            recorder = _WriteErrorRecorder(file)
            try:
                write(recorder)
            except Exception as error:
                if recorder.error is not None and recorder.error is not error:
                    raise recorder.error from None
                raise
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_safetensors(tensors: StateDict, path: PathLike, metadata: Optional[dict[str, str]] = None) -> Path:
    """A safetensors file of ``tensors`` (contiguous CPU copies) through :func:`atomic_write`."""
    data = safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    return atomic_write(path, lambda file: file.write(data))


# ---- loading into a model --------------------------------------------------------------------------------


def checkpoint_filter_for(model: nn.Module) -> Optional[Callable[[dict[str, Any], nn.Module], dict[str, Any]]]:
    """The ``checkpoint_filter_fn`` of the module that defines ``model``'s class (timm's convention), if any."""
    return getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)


def filter_state_dict(state_dict: StateDict, model: nn.Module) -> StateDict:
    """``state_dict`` converted to ``model``'s layout by its :func:`checkpoint_filter_for` (as is without one).

    Tensors the filter leaves on the meta device (placeholders it filled in from a meta model) are dropped.
    """
    filter_fn = checkpoint_filter_for(model)
    if filter_fn is not None:
        state_dict = filter_fn(state_dict, model)
    return {k: v for k, v in state_dict.items() if not v.is_meta}


@dataclass
class WeightsReport:
    """What a weights file gave a model (keys in the model's naming)."""

    path: str
    entry: str  # where the weights were in the file ("" for the whole file)
    loaded: list[str] = field(default_factory=list)
    initial: list[str] = field(default_factory=list)  # model tensors the file did not provide
    unused: list[str] = field(default_factory=list)  # file tensors with no place in the model
    head_reset: bool = False  # the file's classifier had another size and was left out

    def summary(self, shown: int = KEYS_SHOWN) -> str:
        """A line of counts, then the first keys left initial and unused, for the user."""
        where = f" (entry {self.entry!r})" if self.entry else ""
        head = "; the classifier of another size starts afresh" if self.head_reset else ""
        lines = [f"weights from {self.path}{where}: {len(self.loaded)} tensors loaded, {len(self.initial)} left "
                 f"initial, {len(self.unused)} unused{head}"]
        for title, keys in (("left initial", self.initial), ("unused", self.unused)):
            if keys:
                lines.append(f"  {title}: {', '.join(keys[:shown])}{', ...' if len(keys) > shown else ''}")
        return "\n".join(lines)


def _model_name(model: nn.Module) -> str:
    """The timm architecture name of ``model`` where it has one, else its class name."""
    return getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__


def _classifier_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the model's classifier (empty without one)."""
    if not hasattr(model, "get_classifier"):
        return set()
    classifier = model.get_classifier()
    prefix = next((name for name, module in model.named_modules() if module is classifier), None)
    return {f"{prefix}.{key}" for key in classifier.state_dict()} if prefix else set()


def load_weights(
    model: nn.Module,
    path: PathLike,
    key: Optional[str] = None,
    reset_head: bool = False,
    allow_partial: bool = False,
) -> WeightsReport:
    """Loads the weights of any supported file into ``model``: the one loader of every entry point.

    Supported: released BOAT files as downloaded (Swin-style ``{'model', 'config'}`` and CSWin-style
    ``{'state_dict', 'state_dict_ema', 'args'}``), plain Swin/CSWin checkpoints, boat-vit training
    checkpoints (``best.pth`` / ``last.pth``), safetensors files and plain state dicts. The file is read
    safely, the weights are chosen by :func:`select_state_dict` and converted by the model's filter.

    Args:
        model: The model to fill.
        path: The file.
        key: The entry holding the weights (default: EMA weights first, then ``state_dict``, then ``model``).
        reset_head: Leave the model's own classifier where the file's has another number of classes.
        allow_partial: Accept a file that gives less than :data:`MIN_LOADED_FRACTION` of the model's
            weights (the rest stays initial).

    Raises:
        FileNotFoundError: ``path`` is not a file.
        CheckpointError: an unreadable or unsafe file, a classifier of another size without ``reset_head``,
            weights with no place in the model or of other shapes, or too few weights without
            ``allow_partial``.
    """
    state, entry = load_state_dict_file(path, key)
    state = filter_state_dict(state, model)
    own = model.state_dict()
    # a filter fills a branch the file lacks (FSLA from a plain Swin) with the model's own tensors: not loaded
    state = {k: v for k, v in state.items() if k not in own or v.data_ptr() != own[k].data_ptr()}
    report = WeightsReport(path=str(path), entry=entry)
    head = _classifier_keys(model)
    other_head = [k for k in sorted(head) if k in state and state[k].shape != own[k].shape]
    if other_head:
        if not reset_head:
            raise CheckpointError(
                f"{path} has a {state[other_head[0]].shape[0]}-class head but the model has "
                f"{own[other_head[0]].shape[0]} classes; pass --reset-head to start the classifier afresh"
            )
        state = {k: v for k, v in state.items() if k not in head}
        report.head_reset = True
    unexpected = sorted(k for k in state if k not in own)
    wrong_shape = [f"{k}: {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
                   for k, v in own.items() if k in state and state[k].shape != v.shape]
    if unexpected or wrong_shape:
        raise CheckpointError(
            f"{path} does not fit {_model_name(model)} (another model or size?): {len(unexpected)} unexpected tensors "
            f"{unexpected[:KEYS_SHOWN]}, {len(wrong_shape)} of other shapes {wrong_shape[:KEYS_SHOWN]}"
        )
    check_enough_loaded(own, state, head, path, _model_name(model), allow_partial)
    model.load_state_dict(state, strict=False)
    report.loaded = [k for k in own if k in state]
    report.initial = [k for k in own if k not in state]
    return report


def check_enough_loaded(own: StateDict, loaded: Mapping[str, Any], exempt: set[str], path: PathLike, name: str,
                        allow_partial: bool) -> None:
    """Raises a :class:`CheckpointError` when ``loaded`` gives less than :data:`MIN_LOADED_FRACTION` of the
    elements of ``own`` (keys in ``exempt`` aside), unless ``allow_partial``."""
    total = sum(v.numel() for k, v in own.items() if k not in exempt)
    given = sum(v.numel() for k, v in own.items() if k not in exempt and k in loaded)
    if not allow_partial and total and given < MIN_LOADED_FRACTION * total:
        raise CheckpointError(
            f"{path} gives only {given / total:.0%} of the weights of {name} (another model?); a partial load "
            f"needs --partial-weights"
        )


def convert_checkpoint(
    src: PathLike,
    dst: PathLike,
    model: nn.Module,
    key: Optional[str] = None,
    overwrite: bool = False,
    metadata: Optional[dict[str, str]] = None,
) -> dict[str, str]:
    """Writes the weights of ``src`` for ``model`` as a safetensors file in the model's own layout.

    The weights are read, chosen and converted as :func:`load_weights` does, then must fit ``model``
    exactly (every tensor, no more, same shapes); the output holds exactly the model's state dict, so
    ``timm.create_model(NAME, checkpoint_path=dst)`` loads it.

    Args:
        src: The released (or any supported) checkpoint.
        dst: The output, ending in ``.safetensors``; written atomically.
        model: The model the weights are for (its filter converts them; it is loaded with them).
        key: Entry holding the weights (see :func:`select_state_dict`).
        overwrite: Replace an existing ``dst``.
        metadata: Extra string metadata for the file.

    Returns:
        The metadata written into the file (``source``, ``source_key`` and ``metadata``).

    Raises:
        FileExistsError: ``dst`` exists and ``overwrite`` is false.
        ValueError: ``dst`` does not end in ``.safetensors``.
        CheckpointError: unreadable or unsafe input, or weights that do not fit the model exactly.
    """
    src, dst = Path(src), Path(dst)
    if dst.suffix != SAFETENSORS_SUFFIX:
        raise ValueError(f"output must end in {SAFETENSORS_SUFFIX} (timm picks the loader by suffix): {dst}")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"output exists (pass --overwrite to replace it): {dst}")
    state, used_key = load_state_dict_file(src, key)
    state = filter_state_dict(state, model)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
                  for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{src} does not fit {_model_name(model)} (another size or family? see --model and --model-args): "
            f"{len(missing)} missing keys {missing[:KEYS_SHOWN]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:KEYS_SHOWN]}, {len(mismatched)} shape mismatches {mismatched[:KEYS_SHOWN]}"
        )
    model.load_state_dict(state)
    written = {"format": "pt", **(metadata or {}), "source": src.name, "source_key": used_key}
    save_safetensors(model.state_dict(), dst, written)
    _logger.info("Wrote %d tensors to %s", len(own), dst)
    return written
