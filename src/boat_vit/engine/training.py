"""What every training run shares: its common options, mixed precision, the optimizer step and the
non-finite guard."""
import random
from contextlib import nullcontext
from dataclasses import dataclass
from typing import ContextManager, Optional

import numpy as np
import torch
import torch.nn as nn

from .distributed import Distributed

__all__ = [
    "AMP_DTYPES",
    "NonFiniteLossError",
    "RunOptions",
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
    resume: Optional[str] = None
    progress: bool = True


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
