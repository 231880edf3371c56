"""Process groups for ``torchrun``: gloo on CPU, NCCL on CUDA; a no-op in a single process."""
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..errors import Argument, ConfigError

__all__ = ["Distributed", "default_device", "parse_device", "setup_distributed"]


def default_device() -> str:
    """``cuda`` where CUDA is available, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class Distributed:
    """Where this process sits: rank, world size, processes on its machine and its device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum over processes (float64 on the process device); identity in a single process."""
        if not self.enabled:
            return values
        values = values.to(self.device, torch.float64)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values.cpu()

    def all_gather_objects(self, value: Any) -> list[Any]:
        """Every process's ``value`` (picklable), in rank order, on every process; ``[value]`` in a single process."""
        if not self.enabled:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def shutdown(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def parse_device(device: str) -> torch.device:
    """``device`` as a ``torch.device`` of a supported kind (``cpu``, ``cuda``, ``cuda:N``).

    Raises:
        ConfigError: anything else, named.
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ConfigError(Argument("device"), f" must be cpu, cuda or cuda:N, got {device!r}")
    return parsed


def setup_distributed(device: str) -> Distributed:
    """Joins the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1), else a single process.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; under ``torchrun`` CUDA processes use ``LOCAL_RANK``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    requested = parse_device(device)
    if requested.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available (use ", Argument("device", "cpu"), ")")
    if world_size <= 1:
        return Distributed(device=requested)
    rank = int(os.environ["RANK"])
    if requested.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        requested = torch.device("cuda", local_rank)
        torch.cuda.set_device(requested)
    dist.init_process_group(backend="nccl" if requested.type == "cuda" else "gloo")
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    return Distributed(rank=rank, world_size=world_size, device=requested, local_world_size=local_world_size)
