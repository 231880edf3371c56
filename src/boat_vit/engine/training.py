"""What every training run shares: its common options and their checks, continuing a run with the same
options, mixed precision, the optimizer step and the non-finite guard."""
import dataclasses
import math
import random
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ContextManager, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from .distributed import Distributed
from .run_directory import load_resume_checkpoint

__all__ = [
    "AMP_DTYPES",
    "RUN_OPTIONS",
    "Bounds",
    "NonFiniteLossError",
    "RunOptions",
    "check_bounds",
    "check_finite",
    "merge_resumed",
    "resumed_config",
    "checkpoint_to_resume",
    "amp_dtype_for",
    "autocast",
    "default_device",
    "optimizer_step",
    "raise_if_non_finite",
    "rng_state",
]

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def default_device() -> str:
    """``cuda`` where CUDA is available, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class RunOptions:
    """Options every training command shares (classification and segmentation)."""

    amp: bool = False
    amp_dtype: Optional[str] = None  # default: bfloat16 on CPU, float16 on CUDA
    device: str = default_device()
    seed: int = 0
    workers: int = 2
    threads: Optional[int] = None  # intra-op threads; default: engine.threads.default_threads
    resume: Optional[str] = None
    overwrite: bool = False  # replace a run already in the output folder
    progress: bool = True


# Options that may differ when a run continues (--resume): where and how it runs, not what it computes.
RUN_OPTIONS = ("resume", "overwrite", "output", "device", "workers", "threads", "progress")


@dataclass(frozen=True)
class Bounds:
    """The values an option may take: ``low`` and ``high`` (``None``: unbounded), each included unless open."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def admits(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below and not (isinstance(value, float) and math.isnan(value))

    def __str__(self) -> str:
        low = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        high = "" if self.high is None else f"{'<' if self.high_open else '<='} {self.high:g}"
        return " and ".join(part for part in (low, high) if part)


AT_LEAST_ONE = Bounds(1)
NOT_NEGATIVE = Bounds(0)
POSITIVE = Bounds(0, low_open=True)
PROBABILITY = Bounds(0, 1)
RUN_OPTION_BOUNDS = dict(workers=NOT_NEGATIVE, threads=AT_LEAST_ONE)


def check_bounds(config: Any, bounds: Mapping[str, Bounds]) -> None:
    """Raises a ValueError naming the first option of ``config`` (a dataclass) outside its ``bounds``."""
    for name, allowed in bounds.items():
        values = getattr(config, name)
        for value in values if isinstance(values, (tuple, list)) else (values,):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not allowed.admits(value):
                raise ValueError(f"--{name.replace('_', '-')} must be {allowed}, got {values!r}")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def merge_resumed(saved: Mapping[str, Any], explicit: Mapping[str, Any], source: str,
                  fields: Sequence[str]) -> dict[str, Any]:
    """The options of a resumed run: those it was started with, the run options of ``explicit`` on top.

    A run continues exactly only with the options it started with, so an explicit option other than a
    :data:`RUN_OPTIONS` one must equal the saved value.

    Args:
        saved: The options stored in the run's checkpoint.
        explicit: The options given now (``None`` values are not given).
        source: The checkpoint, for messages.
        fields: The option names of the configuration.

    Raises:
        ValueError: an option differs from the saved run's.
    """
    changed = [f"--{k.replace('_', '-')} {v!r} (the run has {saved.get(k)!r})" for k, v in explicit.items()
               if v is not None and k not in RUN_OPTIONS and not _same(v, saved.get(k))]
    if changed:
        raise ValueError(f"--resume {source} continues a run with its own options; these differ: {'; '.join(changed)}"
                         " (drop them, or start a new run)")
    merged = {k: v for k, v in saved.items() if k in fields}
    merged.update({k: v for k, v in explicit.items() if v is not None and k in RUN_OPTIONS})
    return merged


def resumed_config(config_class: type, values: Mapping[str, Any]) -> Any:
    """The configuration (``config_class``, a dataclass with ``check()``) of a run resumed from
    ``values["resume"]``: the options it started with, with the run options of ``values`` (:func:`merge_resumed`).

    Raises:
        ValueError: the options given are out of range, or differ from the run's.
    """
    config_class(**values).check()  # the options given, before they meet the run's
    saved = load_resume_checkpoint(values["resume"])["config"]
    fields = [f.name for f in dataclasses.fields(config_class)]
    config = config_class(**merge_resumed(saved, values, values["resume"], fields))
    config.check()
    return config


def checkpoint_to_resume(config: Any, marker: str, kind: str, command: str) -> Optional[dict]:
    """The checkpoint a run continues from (``config.resume``; ``None`` for a new run).

    Args:
        config: The run's configuration (a dataclass with ``resume``); its options must be the checkpoint's,
            run options aside (:func:`merge_resumed`).
        marker: A key only checkpoints of this kind of run hold.
        kind: The kind of run, for the error (``classification``).
        command: The command that writes such runs, for the error (``train``).

    Raises:
        ValueError: the checkpoint is of another kind of run, or its options differ from ``config``'s.
    """
    if config.resume is None:
        return None
    state = load_resume_checkpoint(config.resume)
    if marker not in state:
        raise ValueError(f"{config.resume} is not a {kind} run (written by `boat-vit {command}`)")
    fields = [f.name for f in dataclasses.fields(config)]
    merge_resumed(state["config"], dataclasses.asdict(config), config.resume, fields)
    return state


def check_finite(value: float, what: str, output: str) -> None:
    """Raises :class:`NonFiniteLossError` for a NaN or infinite evaluation ``value``."""
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"non-finite {what}; the run stopped before saving it and the last good checkpoint in {output} is "
            "intact (try a lower --lr, --clip-grad or no --amp)"
        )


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


def amp_dtype_for(device: torch.device, enabled: bool, name: Optional[str] = None) -> Optional[torch.dtype]:
    """Mixed-precision dtype: ``None`` when off; bfloat16 on CPU and float16 on CUDA unless ``name`` says."""
    if not enabled:
        return None
    if name is not None:
        return AMP_DTYPES[name]
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def autocast(device: torch.device, amp_dtype: Optional[torch.dtype]) -> ContextManager:
    """``torch.autocast`` to ``amp_dtype`` on ``device``, or a no-op context without mixed precision."""
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()


def raise_if_non_finite(loss: torch.Tensor, world: Distributed, where: str, output: str) -> None:
    """Raises :class:`NonFiniteLossError` on every process when the loss of any process is NaN or infinite."""
    finite = torch.isfinite(loss.detach()).to(torch.float64)
    if world.enabled:
        finite = world.all_reduce_sum(finite.reshape(1)) / world.world_size
    if float(finite) < 1:
        raise NonFiniteLossError(
            f"non-finite loss at {where}; the run stopped and the last good checkpoint in {output} is intact "
            "(try a lower --lr, --clip-grad or no --amp)"
        )


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   clip_grad: Optional[float] = None) -> None:
    """One update through the grad scaler: unscale and clip the gradient norm (if asked), step, zero grads."""
    from timm.utils import dispatch_clip_grad

    if clip_grad:
        scaler.unscale_(optimizer)
        dispatch_clip_grad(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def rng_state() -> dict:
    """The global RNG states (torch, NumPy, Python) as plain data, for a checkpoint."""
    numpy_state = np.random.get_state()
    return dict(
        torch=torch.get_rng_state(),
        numpy=torch.from_numpy(numpy_state[1].astype(np.int64)),
        numpy_pos=int(numpy_state[2]),
        python=list(random.getstate()[1]),
    )
