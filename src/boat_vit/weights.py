"""Weights into models: the one way a weights file enters a model.

:func:`load_weights` takes a model, a file and the model's filter function (``filter_fn(state_dict, model)``,
timm's convention: it converts a file's layout to the model's, e.g. a released BOAT-Swin checkpoint to timm's
Swin layout). The file is read safely (:func:`~boat_vit.files.read_checkpoint`), its weights are chosen
(:func:`select_state_dict`), converted by the filter, checked against the model and loaded, and a
:class:`WeightsReport` says what was loaded, left initial and unused. The same rules hold where timm loads
the weights itself (``pretrained=True``): :func:`checked_filter` wraps a family's filter with them.

The rules: a file gives at least :data:`MIN_LOADED_SHARE` of the model's weights (the classifier aside) unless
a partial load is asked for; a tensor of another shape is refused; a classifier of another class count is
refused unless asked to start it afresh; tensors with no place in the model are refused, except where the
model is a backbone (a classifier's head and final norm then stay unused).

Task run checkpoints hold a whole task model (a segmenter: backbone, decoder, heads). One that declares its
backbone part (:data:`BACKBONE_PART`: the prefix of the backbone's keys and how they map to the backbone
architecture's own names) gives that part where a backbone is loaded, and is refused elsewhere.
"""
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
from timm.models import clean_state_dict

from .errors import Argument, CheckpointError, OutputExistsError, WeightsMismatchError
from .files import SAFETENSORS_SUFFIX, PathLike, read_checkpoint, save_safetensors

__all__ = [
    "BACKBONE_PART",
    "MIN_LOADED_SHARE",
    "STATE_DICT_KEYS",
    "FilterFn",
    "StateDict",
    "WeightsReport",
    "checked_filter",
    "classifier_keys",
    "convert_checkpoint",
    "fill_missing_from_model",
    "load_state_dict_into",
    "load_weights",
    "read_state_dict",
    "select_state_dict",
]

_logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
FilterFn = Callable[[StateDict, nn.Module], StateDict]

# where checkpoints keep their weights, in order of preference (timm's loader prefers EMA weights too)
STATE_DICT_KEYS: tuple[str, ...] = ("state_dict_ema", "model_ema", "state_dict", "model")
# A file must give at least this share of a model's weights (in elements, the classifier aside) unless a
# partial load is asked for: a file for another model fails instead of leaving the model at random weights.
MIN_LOADED_SHARE = 0.5
# The entry of a task run checkpoint that declares its backbone part: {"task": kind, "prefix": str,
# "renames": {key prefix as stored: key prefix of the backbone architecture}}.
BACKBONE_PART = "backbone_part"
WHOLE_FILE = ""  # the key of a file that is a state dict itself
KEYS_SHOWN = 5  # keys quoted in a message


def _backbone_part(checkpoint: Mapping, source: PathLike, key: Optional[str]) -> dict[str, Any]:
    """The backbone part of a task run checkpoint: its weights in the backbone architecture's own names."""
    part = checkpoint[BACKBONE_PART]
    weights = checkpoint.get(key or "model")
    if not isinstance(part, Mapping) or not isinstance(weights, Mapping) or not isinstance(part.get("prefix"), str):
        raise CheckpointError(f"{source} declares a backbone part it does not hold")
    prefix, renames = part["prefix"], dict(part.get("renames") or {})
    backbone = {}
    for name, tensor in weights.items():
        if not name.startswith(prefix):
            continue
        name = name[len(prefix):]
        stored = next((stored for stored in renames if name.startswith(stored)), None)
        backbone[renames[stored] + name[len(stored):] if stored else name] = tensor
    return backbone


def select_state_dict(checkpoint: Any, key: Optional[str] = None, source: PathLike = "the checkpoint",
                      backbone: bool = False) -> tuple[StateDict, str]:
    """Picks the weights out of a read checkpoint.

    Args:
        checkpoint: A read file: a checkpoint with its weights under one of :data:`STATE_DICT_KEYS`, or a
            plain state dict.
        key: The entry to use. ``None`` takes the first of :data:`STATE_DICT_KEYS` that holds a state dict
            (EMA weights first, as timm does) or, with none of them, the checkpoint itself; ``""`` asks for
            the checkpoint itself.
        source: The file, for messages.
        backbone: The weights are for a backbone: a task run checkpoint gives its backbone part.

    Returns:
        The state dict (``module.`` / ``_orig_mod.`` wrapper prefixes removed) and the key used (``""`` for
        the checkpoint itself).

    Raises:
        CheckpointError: ``key`` holds no state dict, what was picked is not a state dict, or a task run
            checkpoint is given where a whole model is loaded.
    """
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{source}: expected a checkpoint dict, got {type(checkpoint).__name__}")
    if BACKBONE_PART in checkpoint:
        task = checkpoint[BACKBONE_PART].get("task", "task") if isinstance(checkpoint[BACKBONE_PART], Mapping) else "task"
        if not backbone:
            raise CheckpointError(f"{source} is a {task} training checkpoint: only its backbone can initialise another "
                                  "model, as the backbone of a task model")
        return clean_state_dict(_backbone_part(checkpoint, source, key)), f"{key or 'model'} (backbone)"
    found = [k for k in STATE_DICT_KEYS if isinstance(checkpoint.get(k), Mapping)]
    if key is None:
        key = found[0] if found else WHOLE_FILE
    if key and not isinstance(checkpoint.get(key), Mapping):
        raise CheckpointError(f"{source} has no state dict under {key!r}; state dicts found under: {found or 'none'} "
                              f"(top-level keys: {sorted(map(str, checkpoint))})")
    state_dict = checkpoint[key] if key else checkpoint
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        where = f"entry {key!r} of {source}" if key else str(source)
        raise CheckpointError(f"the {where} is not a state dict: {sorted(map(str, not_tensors))[:KEYS_SHOWN]} hold "
                              f"no tensors (state dicts found under: {found or 'none'})")
    return clean_state_dict(dict(state_dict)), key


def read_state_dict(path: PathLike, key: Optional[str] = None, backbone: bool = False,
                    map_location: Any = "cpu") -> tuple[StateDict, str]:
    """The state dict of a checkpoint file, read safely; see :func:`select_state_dict` for ``key`` and
    ``backbone``.

    To load a chosen entry through timm (which itself picks EMA weights first), pass the result on:
    ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(state_dict=state_dict))``.

    Returns:
        The state dict and the key it was found under (``""``: the whole file).
    """
    state_dict, used = select_state_dict(read_checkpoint(path, map_location), key, path, backbone)
    _logger.info("Read the state dict %s %s", f"under {used!r} of" if used else "that is the whole of", path)
    return state_dict, used


def fill_missing_from_model(
    state_dict: dict[str, Any], model: nn.Module, belongs: Callable[[str], bool], description: str
) -> list[str]:
    """Keeps the model's own weights for a branch that a checkpoint lacks entirely (for filter functions).

    Lets a plain Swin/CSWin checkpoint load into a BOAT model strictly: when none of the model's keys for
    which ``belongs(key)`` holds is in ``state_dict``, the model's current tensors are added for all of
    them and listed in a warning; :func:`load_weights` reports them as left initial. A checkpoint holding
    some of them is left as it is (a strict load then reports the rest).

    Returns:
        The keys added.
    """
    own = model.state_dict()
    wanted = [k for k in own if belongs(k)]
    if not wanted or any(k in state_dict for k in wanted):
        return []
    state_dict.update((k, own[k]) for k in wanted)
    _logger.warning("The checkpoint has no %s weights; these %d keys keep their fresh initialisation: %s",
                    description, len(wanted), ", ".join(wanted))
    return wanted


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


def classifier_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the model's classifier (empty without one)."""
    if not hasattr(model, "get_classifier"):
        return set()
    classifier = model.get_classifier()
    prefix = next((name for name, module in model.named_modules() if module is classifier), None)
    return {f"{prefix}.{key}" for key in classifier.state_dict()} if prefix else set()


def _apply_filter(state_dict: StateDict, model: nn.Module, filter_fn: Optional[FilterFn]) -> StateDict:
    """``state_dict`` in ``model``'s layout (placeholders a filter left on the meta device dropped)."""
    if filter_fn is not None:
        state_dict = filter_fn(state_dict, model)
    return {k: v for k, v in state_dict.items() if not v.is_meta}


def _from_file(state_dict: StateDict, own: StateDict) -> StateDict:
    """``state_dict`` without the model's own tensors that a filter put in for a branch the file lacks
    (:func:`fill_missing_from_model`): they did not come from the file."""
    return {k: v for k, v in state_dict.items()
            if not (k in own and v.numel() and v.data_ptr() == own[k].data_ptr())}


def _require_enough(own: StateDict, given: Mapping[str, Any], exempt: set[str], source: PathLike, name: str,
                    allow_partial: bool, opt_out: Argument = Argument("allow_partial", True)) -> None:
    """Refuses ``given`` where it holds less than :data:`MIN_LOADED_SHARE` of the elements of ``own`` (keys
    in ``exempt`` aside), unless ``allow_partial`` (the caller's ``opt_out`` argument)."""
    total = sum(v.numel() for k, v in own.items() if k not in exempt)
    loaded = sum(v.numel() for k, v in own.items() if k not in exempt and k in given)
    if not allow_partial and total and loaded < MIN_LOADED_SHARE * total:
        raise WeightsMismatchError(f"{source} gives only {loaded / total:.0%} of the weights of {name} (another "
                                   "model?); a partial load needs ", opt_out)


def load_weights(
    model: nn.Module,
    path: PathLike,
    filter_fn: Optional[FilterFn] = None,
    *,
    key: Optional[str] = None,
    reset_head: bool = False,
    allow_partial: bool = False,
    backbone: bool = False,
) -> WeightsReport:
    """Loads the weights of a file into ``model``: the one way weights files enter a model.

    Takes released BOAT files as downloaded (Swin-style ``{'model', 'config'}`` and CSWin-style
    ``{'state_dict', 'state_dict_ema', 'args'}``), plain Swin/CSWin checkpoints, boat-vit run checkpoints
    (``best.pth`` / ``last.pth``), safetensors files and plain state dicts.

    Args:
        model: The model to fill.
        path: The file.
        filter_fn: Converts the file's state dict to the model's layout, ``filter_fn(state_dict, model)``
            (``boat_vit.models.weights_filter(model)`` gives the model family's); ``None``: the file is in
            the model's layout.
        key: The entry holding the weights (default: EMA weights first, then ``state_dict``, then ``model``).
        reset_head: Leave the model's own classifier where the file's has another number of classes.
        allow_partial: Accept a file that gives less than :data:`MIN_LOADED_SHARE` of the model's weights
            (the rest stays initial).
        backbone: ``model`` is a backbone: tensors of the file with no place in it (a classifier's head and
            final norm) are reported unused, and a task run checkpoint gives its backbone part.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        CheckpointError: an unreadable or unsafe file, or a task run checkpoint where a whole model is loaded.
        WeightsMismatchError: see :func:`load_state_dict_into`.
    """
    state, entry = read_state_dict(path, key, backbone)
    return load_state_dict_into(model, state, path, filter_fn, entry=entry, reset_head=reset_head,
                                allow_partial=allow_partial, backbone=backbone)


def load_state_dict_into(
    model: nn.Module,
    state_dict: StateDict,
    source: PathLike,
    filter_fn: Optional[FilterFn] = None,
    *,
    entry: str = WHOLE_FILE,
    reset_head: bool = False,
    allow_partial: bool = False,
    backbone: bool = False,
) -> WeightsReport:
    """Loads a state dict already read from ``source`` into ``model`` as :func:`load_weights` does.

    Raises:
        WeightsMismatchError: a classifier of another size without ``reset_head``, tensors of other shapes
            or (unless ``backbone``) with no place in the model, or too few weights without ``allow_partial``.
    """
    own = model.state_dict()
    state = _from_file(_apply_filter(state_dict, model, filter_fn), own)
    report = WeightsReport(path=str(source), entry=entry)
    head = classifier_keys(model)
    other_head = [k for k in sorted(head) if k in state and state[k].shape != own[k].shape]
    if other_head:
        if not reset_head:
            raise WeightsMismatchError(
                f"{source} has a {state[other_head[0]].shape[0]}-class head but the model has "
                f"{own[other_head[0]].shape[0]} classes; pass ", Argument("reset_head", True),
                " to start the classifier afresh")
        state = {k: v for k, v in state.items() if k not in head}
        report.head_reset = True
    unexpected = sorted(k for k in state if k not in own)
    refused = [] if backbone else unexpected
    wrong_shape = [f"{k}: {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
                   for k, v in own.items() if k in state and state[k].shape != v.shape]
    if wrong_shape or refused:
        raise WeightsMismatchError(
            f"{source} does not fit {_model_name(model)} (another model or size?): {len(wrong_shape)} tensors of "
            f"other shapes {wrong_shape[:KEYS_SHOWN]}, {len(refused)} with no place in the model "
            f"{refused[:KEYS_SHOWN]}")
    _require_enough(own, state, head, source, _model_name(model), allow_partial)
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    report.loaded = [k for k in own if k in state]
    report.initial = [k for k in own if k not in state]
    report.unused = unexpected
    return report


def checked_filter(filter_fn: FilterFn, allow_partial: bool = False) -> FilterFn:
    """``filter_fn`` that also applies :func:`load_weights`'s share rule, for timm's own loading.

    timm's ``create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=PATH))`` runs a family's
    filter and then loads non-strictly where the class count differs: a file for another model would leave the
    model at random weights. With this wrapper such a file is refused (the classifier aside).

    Args:
        filter_fn: The family's filter.
        allow_partial: Accept a file that gives less than :data:`MIN_LOADED_SHARE` of the model's weights
            (``pretrained_strict=False`` of ``timm.create_model``).
    """

    def filter_and_check(state_dict: StateDict, model: nn.Module) -> StateDict:
        converted = filter_fn(state_dict, model)
        own = model.state_dict()
        given = {k for k, v in _from_file(_apply_filter(converted, model, None), own).items()
                 if k in own and v.shape == own[k].shape}
        _require_enough(own, given, classifier_keys(model), "the pretrained checkpoint", _model_name(model),
                        allow_partial, Argument("pretrained_strict", False))
        return converted

    return filter_and_check


def convert_checkpoint(
    src: PathLike,
    dst: PathLike,
    model: nn.Module,
    filter_fn: Optional[FilterFn] = None,
    *,
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
        model: The model the weights are for (it is loaded with them).
        filter_fn: Converts the file's layout to the model's (see :func:`load_weights`).
        key: Entry holding the weights (see :func:`select_state_dict`).
        overwrite: Replace an existing ``dst``.
        metadata: Extra string metadata for the file.

    Returns:
        The metadata written into the file (``source``, ``source_key`` and ``metadata``).

    Raises:
        OutputExistsError: ``dst`` exists and ``overwrite`` is false.
        CheckpointError: ``dst`` does not end in ``.safetensors``; unreadable or unsafe input.
        WeightsMismatchError: weights that do not fit the model exactly.
    """
    src, dst = Path(src), Path(dst)
    if dst.suffix != SAFETENSORS_SUFFIX:
        raise CheckpointError(f"the output must end in {SAFETENSORS_SUFFIX} (timm picks the loader by suffix): {dst}")
    if dst.exists() and not overwrite:
        raise OutputExistsError("output exists (pass ", Argument("overwrite", True), f" to replace it): {dst}")
    state, used_key = read_state_dict(src, key)
    state = _apply_filter(state, model, filter_fn)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
                  for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        raise WeightsMismatchError(
            f"{src} does not fit {_model_name(model)} (another size or family? check the model and its arguments): "
            f"{len(missing)} missing keys {missing[:KEYS_SHOWN]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:KEYS_SHOWN]}, {len(mismatched)} shape mismatches {mismatched[:KEYS_SHOWN]}")
    model.load_state_dict(state)
    written = {"format": "pt", **(metadata or {}), "source": src.name, "source_key": used_key}
    save_safetensors(model.state_dict(), dst, written)
    _logger.info("Wrote %d tensors to %s", len(own), dst)
    return written
