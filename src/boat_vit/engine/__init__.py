"""The run engine that classification and segmentation training share: processes, seeds and samplers,
mixed precision, the optimizer step, the non-finite guard and the run directory with exact resume."""
from .distributed import Distributed, setup_distributed
from .run_directory import Panels, RunDirectory, load_resume_checkpoint
from .sampling import (
    SEED_STRIDE,
    GlobalBatchSampler,
    ResumedBatches,
    SeededSamples,
    ShardSampler,
    derive_seed,
    seed_everything,
)
from .training import (
    AMP_DTYPES,
    NonFiniteLossError,
    RunOptions,
    amp_dtype_for,
    autocast,
    default_device,
    optimizer_step,
    raise_if_non_finite,
    rng_state,
)

__all__ = [
    "AMP_DTYPES",
    "SEED_STRIDE",
    "Distributed",
    "GlobalBatchSampler",
    "NonFiniteLossError",
    "Panels",
    "ResumedBatches",
    "RunDirectory",
    "RunOptions",
    "SeededSamples",
    "ShardSampler",
    "amp_dtype_for",
    "autocast",
    "default_device",
    "derive_seed",
    "load_resume_checkpoint",
    "optimizer_step",
    "raise_if_non_finite",
    "rng_state",
    "seed_everything",
    "setup_distributed",
]
