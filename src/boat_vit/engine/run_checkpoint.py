"""The run checkpoint: what a training run saves (``last.pth``, ``best.pth``), and reading it back once.

Every task saves the same entries (:data:`RUN_CHECKPOINT_FORMAT`):

* ``format``, ``task`` (the task's kind, e.g. ``"classification"``), ``config`` (the run's options);
* ``model_args``: plain data from which the task rebuilds the model exactly as trained (every architecture
  argument, the input size included); ``model``: its weights; ``ema``: the EMA model's state (or ``None``);
* ``optimizer``, ``scheduler``, ``scaler``, ``rng`` (global generators): the state of training;
* ``step`` (epochs or iterations done), ``metrics`` (one row per evaluation), ``best`` (the best evaluation),
  ``running`` (training loss and throughput since the last row, summed over processes);
* the task's own entries (``extras``: class names, data configuration, the backbone part, ...).

Checkpoints of earlier releases (without ``format``) still give their model for evaluation and as weights;
they cannot be continued.

Reading checks every entry: a file whose entries were edited or lost is refused in one message naming the
file and the entry, before anything is built from it.
"""
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch.nn as nn
from torch import Tensor

from ..errors import CheckpointError, first_line
from ..files import PathLike, read_checkpoint
from ..weights import KEYS_SHOWN, StateDict, WeightsReport, load_state_dict_into
from .run_directory import LAST_CHECKPOINT

__all__ = ["RUN_CHECKPOINT_FORMAT", "RunCheckpoint"]

RUN_CHECKPOINT_FORMAT = 1
CONTINUING = ("config", "metrics", "best", "optimizer", "scheduler", "scaler", "rng", "step", "running")
STATE_DICT = "a state dict"
# What each entry holds: the types it may have and how a message names them.
ENTRY_KINDS: dict[str, tuple[tuple[type, ...], str]] = {
    "format": ((int,), "a format number"),
    "task": ((str,), "a task name"),
    "config": ((dict,), "the run's options"),
    "model_args": ((dict,), "model arguments"),
    "model": ((Mapping,), STATE_DICT),
    "ema": ((Mapping, type(None)), STATE_DICT),
    "optimizer": ((dict,), "an optimizer state"),
    "scheduler": ((dict,), "a scheduler state"),
    "scaler": ((dict,), "a gradient scaler state"),
    "rng": ((dict,), "random generator states"),
    "step": ((int,), "a number of steps"),
    "metrics": ((list,), "a list of metrics rows"),
    "best": ((dict, type(None)), "the best evaluation"),
    "running": ((dict,), "running sums"),
}
EARLIER_RELEASE_ENTRIES = ("task", "model_args", "model")  # what evaluating a checkpoint of an earlier release needs
RNG_ENTRIES = ("torch", "numpy", "numpy_pos", "python")
RUNNING_ENTRIES = ("loss", "images", "skipped", "seconds")
OPTIMIZER_ENTRIES = ("state", "param_groups")


def _earlier_release(path: Path, state: dict) -> Optional[dict]:
    """A checkpoint of an earlier release in today's entries (what evaluation needs), or ``None``."""
    if "segmenter" in state:
        return dict(state, task="segmentation", model_args=state["segmenter"])
    if "model_name" in state and "class_names" in state:
        if not isinstance(state["model_name"], str):
            raise _damaged(path, "model_name", f"is of type {type(state['model_name']).__name__}, not a model name")
        model_args = dict(name=state["model_name"], num_classes=len(state["class_names"]) if
                          isinstance(state["class_names"], list) else None, kwargs=state.get("model_kwargs", {}))
        return dict(state, task="classification", model_args=model_args)
    return None


@dataclass
class RunCheckpoint:
    """A run's checkpoint as read from its file (read once: resuming and evaluating use this object)."""

    path: Path
    state: dict

    @classmethod
    def read(cls, path: PathLike, task: Optional[str] = None) -> "RunCheckpoint":
        """Reads the checkpoint ``path`` (a run directory means its ``last.pth``), safely.

        Args:
            path: A run directory or a checkpoint file.
            task: The kind of run it must be (``None``: any).

        Raises:
            FileNotFoundError: no such file.
            CheckpointError: not a run checkpoint, or one of another task.
        """
        path = Path(path)
        file = path / LAST_CHECKPOINT if path.is_dir() else path
        state = read_checkpoint(file)
        if isinstance(state, dict) and "format" in state:
            _check_entries(file, state, ENTRY_KINDS)
            if state["format"] != RUN_CHECKPOINT_FORMAT:
                raise CheckpointError(f"{file} has run checkpoint format {state['format']}; this release reads "
                                      f"format {RUN_CHECKPOINT_FORMAT}")
            _check_training_state(file, state)
        else:
            earlier = _earlier_release(file, state) if isinstance(state, dict) else None
            if earlier is None:
                if isinstance(state, dict) and {"task", "model_args"} <= set(state):  # this release's, edited
                    raise _damaged(file, "format", "is missing")
                kind = f"{task} " if task else "training "
                raise CheckpointError(f"{path} is not a {kind}checkpoint (last.pth or best.pth of a boat-vit run)")
            state = earlier
            _check_entries(file, state, {name: ENTRY_KINDS[name] for name in EARLIER_RELEASE_ENTRIES})
        if task is not None and state["task"] != task:
            raise CheckpointError(f"{path} is not a {task} checkpoint: it holds a {state['task']} run")
        return cls(file, state)

    @property
    def task(self) -> str:
        return self.state["task"]

    @property
    def config(self) -> dict:
        return self.state["config"]

    @property
    def model_args(self) -> dict:
        return self.state["model_args"]

    def entry(self, name: str) -> Any:
        """A task's own entry (``extras`` at saving)."""
        if name not in self.state:
            raise _damaged(self.path, name, "is missing")
        return self.state[name]

    def damaged(self, name: str, problem: str) -> CheckpointError:
        """The error for entry ``name`` that holds what it cannot (``problem`` says what), for a task's checks."""
        return _damaged(self.path, name, problem)

    def weights(self, ema: bool = False) -> StateDict:
        """The model's weights, or those of its EMA (``ema``).

        Raises:
            CheckpointError: no EMA weights were saved.
        """
        if not ema:
            return self.state["model"]
        if self.state.get("ema") is None:
            raise CheckpointError(f"{self.path} has no EMA weights (the run kept no EMA)")
        return {k.removeprefix("module."): v for k, v in self.state["ema"].items()}

    def load_into(self, model: nn.Module, ema: bool = False) -> WeightsReport:
        """Loads the run's weights (or its EMA's) into ``model``, rebuilt from :attr:`model_args`: every
        tensor of the model must come from the file.

        Raises:
            CheckpointError: tensors of the model are missing from the file (damaged), or no EMA was saved.
            WeightsMismatchError: tensors of other shapes, or with no place in the model.
        """
        entry, weights = ("ema" if ema else "model"), self.weights(ema)
        own = model.state_dict()
        missing = [key for key in own if key not in weights]
        if missing:
            more = ", ..." if len(missing) > KEYS_SHOWN else ""
            raise self.damaged(entry, f"lacks {len(missing)} of the model's {len(own)} tensors "
                                      f"({', '.join(missing[:KEYS_SHOWN])}{more})")
        return load_state_dict_into(model, weights, self.path, entry=entry)

    def restore_training_state(self, optimizer: Any, scheduler: Any, scaler: Any) -> None:
        """Restores the optimizer, the scheduler and the gradient scaler of the run (the weights:
        :meth:`load_into`).

        Raises:
            CheckpointError: a state that does not fit this run's (naming the entry).
        """
        with self._fitting("optimizer"):
            optimizer.load_state_dict(self.state["optimizer"])
        with self._fitting("scheduler"):
            scheduler.load_state_dict(self.state["scheduler"])
        with self._fitting("scaler"):
            scaler.load_state_dict(self.state["scaler"])

    @contextmanager
    def _fitting(self, name: str) -> Iterator[None]:
        """Turns the error of restoring entry ``name`` into a :class:`CheckpointError` naming it."""
        try:
            yield
        except (KeyError, ValueError, TypeError, IndexError, AttributeError, RuntimeError) as error:
            raise self.damaged(name, f"does not fit this run ({first_line(error)})") from None

    def check_continuable(self) -> None:
        """Raises a :class:`CheckpointError` unless the checkpoint holds a training state to continue from."""
        if self.state.get("format") != RUN_CHECKPOINT_FORMAT or any(k not in self.state for k in CONTINUING):
            raise CheckpointError(f"{self.path} was written by an earlier release of boat-vit: its weights load for "
                                  "evaluation or as initial weights, but the run cannot be continued")


def _check_entries(path: Path, state: dict, kinds: dict[str, tuple[tuple[type, ...], str]]) -> None:
    """Raises a :class:`CheckpointError` naming the first of ``kinds``' entries that is missing or holds another
    kind of value (state dicts: tensors by name)."""
    for name, (types, description) in kinds.items():
        if name not in state:
            raise _damaged(path, name, "is missing")
        value = state[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise _damaged(path, name, f"is of type {type(value).__name__}, not {description}")
        if description == STATE_DICT and value is not None and not _is_state_dict(value):
            raise _damaged(path, name, f"is not {STATE_DICT} (tensors by name)")


def _check_training_state(path: Path, state: dict) -> None:
    """Raises a :class:`CheckpointError` naming the first entry of the training state that lacks what
    continuing needs (entry types already checked)."""
    for name, entries in (("rng", RNG_ENTRIES), ("running", RUNNING_ENTRIES), ("optimizer", OPTIMIZER_ENTRIES)):
        absent = [entry for entry in entries if entry not in state[name]]
        if absent:
            raise _damaged(path, name, f"lacks {', '.join(absent)}")
    if not all(isinstance(state["running"][k], (int, float)) for k in RUNNING_ENTRIES):
        raise _damaged(path, "running", f"holds values that are not numbers: {state['running']!r}")
    if state["step"] < 0:
        raise _damaged(path, "step", f"is negative: {state['step']}")
    if not all(isinstance(row, dict) for row in state["metrics"]):
        raise _damaged(path, "metrics", "holds rows that are not tables of values")
    if state["best"] is not None and not isinstance(state["best"].get("score"), (int, float)):
        raise _damaged(path, "best", f"has no score: {state['best']!r}")


def _damaged(path: Path, name: str, problem: str) -> CheckpointError:
    return CheckpointError(f"{path} is damaged: its {name!r} entry {problem}")


def _is_state_dict(value: Mapping) -> bool:
    return bool(value) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items())
