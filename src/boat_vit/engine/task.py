"""What a task brings to the training skeleton (:func:`~boat_vit.engine.run_training`): a
:class:`TrainingTask` subclass (data, model, loss, metrics, recipe) and the small records its hooks return."""
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from ..weights import WeightsReport
from .distributed import Distributed
from .options import RunOptions
from .run_checkpoint import RunCheckpoint
from .run_directory import Panels

__all__ = ["EPOCHS", "ITERATIONS", "Evaluation", "Schedule", "StepOutput", "TrainingData", "TrainingTask"]

EPOCHS, ITERATIONS = "epoch", "iteration"  # the units a run counts in


@dataclass
class TrainingData:
    """What a task trains on.

    Attributes:
        train_set: Indexable training samples (loaded and augmented under their own seed, see
            :class:`~boat_vit.engine.sampling.SeededSamples`).
        collate: Collates a list of samples into the batch :meth:`TrainingTask.training_step` takes.
    """

    train_set: Dataset
    collate: Callable


@dataclass(frozen=True)
class Schedule:
    """How long a run is and when it evaluates and saves.

    Attributes:
        total: Epochs or iterations in all (what the scheduler gives, cool-down included).
        eval_interval: Iterations between evaluations (iteration runs; epoch runs evaluate every epoch).
        checkpoint_interval: Iterations between checkpoints (iteration runs; epoch runs save every epoch).
    """

    total: int
    eval_interval: int = 1
    checkpoint_interval: int = 1


@dataclass
class StepOutput:
    """What one training micro-step gives the skeleton: the loss to back-propagate, the images it covered and
    the unreadable samples its batch skipped."""

    loss: torch.Tensor
    images: int
    skipped: int = 0


@dataclass
class Evaluation:
    """One evaluation of a task.

    Attributes:
        row: The metrics of this evaluation, for ``metrics.csv`` (the task's :attr:`TrainingTask.metric_fields`);
            ``skipped_images``: unreadable samples it skipped (the skeleton adds those of training).
        score: The value the best checkpoint is chosen by (higher is better).
        best: What to keep of this evaluation when it is the best so far (the checkpoint's and summary's
            ``best``).
        line: A line to print after it (``None``: nothing).
    """

    row: dict
    score: float
    best: dict
    line: Optional[str] = None


class TrainingTask(ABC):
    """One kind of training on the skeleton: its data, model, loss, metrics and recipe.

    A subclass sets the class attributes and implements the hooks; :func:`run_training` calls them in this
    order: :meth:`check_batching`, :meth:`build_data`, :meth:`build_model`, :meth:`build_optimizer`,
    :meth:`build_scheduler`, then :meth:`training_step` for every micro-step and :meth:`evaluate` at every
    evaluation, :meth:`checkpoint_extras` at every checkpoint and :meth:`summary` at the end.

    Attributes:
        kind: The task's name, stored in its run checkpoints and checked where they are read.
        unit: :data:`EPOCHS` or :data:`ITERATIONS`.
        metric_fields: The columns of ``metrics.csv``: the unit first, then ``train_loss``, ``lr``, the task's
            metrics (:attr:`Evaluation.row`) and ``images_per_s``, in the order wanted.
        plot_panels: The panels of ``curves.png``.
        sync_batch_norm: Convert batch norms to SyncBatchNorm under CUDA ``torchrun``.
        config: The run's options (a :class:`~boat_vit.engine.options.RunOptions` dataclass with ``output``,
            ``clip_grad`` and ``check()``; ``lr`` and ``weight_decay`` for the default :meth:`build_optimizer`).
    """

    kind: ClassVar[str]
    unit: ClassVar[str]
    metric_fields: ClassVar[tuple[str, ...]]
    plot_panels: ClassVar[Panels]
    sync_batch_norm: ClassVar[bool] = False

    def __init__(self, config: RunOptions):
        self.config = config

    # ---- recipe and data --------------------------------------------------------------------------------

    accum_steps: int = 1  # micro-steps per optimizer step
    ema_decay: Optional[float] = None  # keep an EMA of the weights with this decay (evaluated and saved)

    @abstractmethod
    def check_batching(self, world: Distributed) -> int:
        """The images of one micro-step over all processes (checked against the process count).

        Raises:
            ConfigError: the batch cannot be split so.
        """

    @abstractmethod
    def build_data(self, world: Distributed, resumed: Optional[RunCheckpoint]) -> TrainingData:
        """Training (and the task's evaluation) data; checks a resumed run's data is its own."""

    # ---- model ------------------------------------------------------------------------------------------

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The model, freshly initialised under the run's seed (the same call for a new and a resumed run)."""

    @abstractmethod
    def model_args(self) -> dict:
        """Plain data from which the task rebuilds :meth:`build_model`'s model exactly (stored in checkpoints)."""

    def load_initial_weights(self, model: nn.Module) -> Optional[WeightsReport]:
        """Loads the initial weights a new run was given (none by default); the report is printed and summarised."""
        return None

    # ---- optimisation -----------------------------------------------------------------------------------

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The optimizer of ``model``'s parameters; by default timm's AdamW with ``config.lr`` and
        ``config.weight_decay``, without weight decay on norms, biases and the model's ``no_weight_decay()`` set."""
        from timm.optim import create_optimizer_v2

        return create_optimizer_v2(model, "adamw", lr=self.config.lr, weight_decay=self.config.weight_decay)

    @abstractmethod
    def build_scheduler(self, optimizer: torch.optim.Optimizer, updates_per_epoch: int) -> tuple[Any, Schedule]:
        """A timm scheduler (stepped with ``step_update(updates)`` after every optimizer step) and the run's
        :class:`Schedule`."""

    @abstractmethod
    def training_step(self, model: nn.Module, batch: Any, world: Distributed,
                      amp_dtype: Optional[torch.dtype]) -> StepOutput:
        """The loss of one micro-batch (on this process), under ``autocast`` where mixed precision is on."""

    # ---- evaluation and results -------------------------------------------------------------------------

    @abstractmethod
    def evaluate(self, model: nn.Module, ema_model: Optional[nn.Module], world: Distributed,
                 amp_dtype: Optional[torch.dtype], progress: bool, step: int) -> Evaluation:
        """Evaluates the model (and its EMA) at ``step`` (the epoch's index, or the iterations done); raises
        :class:`~boat_vit.errors.NonFiniteLossError` through :func:`check_finite` for a non-finite result, which
        then stops the run before anything is saved. ``progress``: show a progress bar."""

    def checkpoint_extras(self) -> dict:
        """The task's own entries of its run checkpoints (plain data, e.g. class names)."""
        return {}

    @abstractmethod
    def summary(self, rows: list[dict], best: dict, weights: Optional[WeightsReport]) -> dict:
        """The task's part of ``summary.json`` (the skeleton adds wall time, processes, output and options)."""

    def title(self) -> str:
        """The title of ``curves.png``."""
        return self.kind
