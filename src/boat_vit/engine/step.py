"""One training step's parts that every task shares: mixed precision, the optimizer step through the grad
scaler, the non-finite guard, and the RNG states a checkpoint records."""
import math
import random
from contextlib import nullcontext
from typing import ContextManager, Optional

import numpy as np
import torch
import torch.nn as nn

from ..errors import Argument, NonFiniteLossError
from .distributed import Distributed
from .run_directory import RunDirectory

__all__ = ["AMP_DTYPES", "amp_dtype_for", "autocast", "check_finite", "optimizer_step", "raise_if_non_finite",
           "rng_state"]

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


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


def _stopped(what: str, output: str) -> NonFiniteLossError:
    saved = RunDirectory.holds_checkpoint(output)
    kept = (f"the last good checkpoint in {output} is intact" if saved else
            f"no checkpoint had been saved in {output} yet")
    return NonFiniteLossError(f"non-finite {what}; the run stopped before saving it and {kept} (try a lower ",
                              Argument("lr"), ", ", Argument("clip_grad"), " or no ", Argument("amp"), ")")


def check_finite(value: float, what: str, output: str) -> None:
    """Raises :class:`~boat_vit.errors.NonFiniteLossError` for a NaN or infinite evaluation ``value``."""
    if not math.isfinite(value):
        raise _stopped(what, output)


def raise_if_non_finite(loss: torch.Tensor, world: Distributed, where: str, output: str) -> None:
    """Raises :class:`~boat_vit.errors.NonFiniteLossError` on every process when the loss of any process is
    NaN or infinite."""
    finite = torch.isfinite(loss.detach()).to(torch.float64)
    if world.enabled:
        finite = world.all_reduce_sum(finite.reshape(1)) / world.world_size
    if float(finite) < 1:
        raise _stopped(f"loss at {where}", output)


def rng_state() -> dict:
    """The global RNG states (torch, NumPy, Python) as plain data, for a checkpoint."""
    numpy_state = np.random.get_state()
    return dict(
        torch=torch.get_rng_state(),
        numpy=torch.from_numpy(numpy_state[1].astype(np.int64)),
        numpy_pos=int(numpy_state[2]),
        python=list(random.getstate()[1]),
    )
