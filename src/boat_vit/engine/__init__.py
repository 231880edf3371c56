"""The run engine every training task shares: processes, seeds and samplers, the options of a run, the run
directory and the run checkpoint, and the training skeleton (:class:`TrainingTask`, :func:`run_training`)."""
from ..errors import NonFiniteLossError, RunDirectoryError
from .distributed import Distributed, default_device, parse_device, setup_distributed
from .options import (
    AT_LEAST_ONE,
    NOT_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    RUN_OPTION_BOUNDS,
    RUN_OPTIONS,
    Bounds,
    RunOptions,
    check_bounds,
    given_options,
    merge_resumed,
    preset_options,
    resumed_config,
)
from .run_checkpoint import RUN_CHECKPOINT_FORMAT, RunCheckpoint
from .run_directory import Panels, RunDirectory
from .sampling import (
    SEED_STRIDE,
    GlobalBatchSampler,
    ResumedBatches,
    SeededSamples,
    ShardSampler,
    derive_seed,
    seed_everything,
)
from .threads import default_threads, set_threads, usable_cores
from .step import AMP_DTYPES, amp_dtype_for, autocast, check_finite, optimizer_step, raise_if_non_finite, rng_state
from .task import EPOCHS, ITERATIONS, Evaluation, Schedule, StepOutput, TrainingData, TrainingTask
from .trainer import run_training

__all__ = [
    "AMP_DTYPES",
    "AT_LEAST_ONE",
    "EPOCHS",
    "ITERATIONS",
    "NOT_NEGATIVE",
    "POSITIVE",
    "PROBABILITY",
    "RUN_CHECKPOINT_FORMAT",
    "RUN_OPTIONS",
    "RUN_OPTION_BOUNDS",
    "SEED_STRIDE",
    "Bounds",
    "Distributed",
    "Evaluation",
    "GlobalBatchSampler",
    "NonFiniteLossError",
    "Panels",
    "ResumedBatches",
    "RunCheckpoint",
    "RunDirectory",
    "RunDirectoryError",
    "RunOptions",
    "Schedule",
    "SeededSamples",
    "ShardSampler",
    "StepOutput",
    "TrainingData",
    "TrainingTask",
    "amp_dtype_for",
    "autocast",
    "check_bounds",
    "check_finite",
    "default_device",
    "default_threads",
    "derive_seed",
    "given_options",
    "merge_resumed",
    "optimizer_step",
    "parse_device",
    "preset_options",
    "raise_if_non_finite",
    "resumed_config",
    "rng_state",
    "run_training",
    "seed_everything",
    "set_threads",
    "setup_distributed",
    "usable_cores",
]
