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
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..errors import CheckpointError
from ..files import PathLike, read_checkpoint
from ..weights import StateDict
from .run_directory import LAST_CHECKPOINT

__all__ = ["RUN_CHECKPOINT_FORMAT", "RunCheckpoint"]

RUN_CHECKPOINT_FORMAT = 1
CONTINUING = ("config", "metrics", "best", "optimizer", "scheduler", "scaler", "rng", "step", "running")


def _earlier_release(state: dict) -> Optional[dict]:
    """A checkpoint of an earlier release in today's entries (what evaluation needs), or ``None``."""
    if "segmenter" in state:
        return dict(state, task="segmentation", model_args=state["segmenter"])
    if "model_name" in state and "class_names" in state:
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
        if isinstance(state, dict) and "format" not in state:
            state = _earlier_release(state) or state
        if not isinstance(state, dict) or not isinstance(state.get("task"), str) or "model" not in state:
            kind = f"{task} " if task else "training "
            raise CheckpointError(f"{path} is not a {kind}checkpoint (last.pth or best.pth of a boat-vit run)")
        if not isinstance(state.get("model_args"), dict):
            raise CheckpointError(f"{path} does not say which model it holds (damaged?)")
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
            raise CheckpointError(f"{self.path} has no {name!r} entry (damaged?)")
        return self.state[name]

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

    def check_continuable(self) -> None:
        """Raises a :class:`CheckpointError` unless the checkpoint holds a training state to continue from."""
        if self.state.get("format") != RUN_CHECKPOINT_FORMAT or any(k not in self.state for k in CONTINUING):
            raise CheckpointError(f"{self.path} was written by an earlier release of boat-vit: its weights load for "
                                  "evaluation or as initial weights, but the run cannot be continued")
