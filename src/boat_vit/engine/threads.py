"""How many intra-op threads a process should use: the cores it may actually run on, less its data workers.

PyTorch's default is one thread per core of the machine. Where the process may use fewer (CPU affinity, a
cgroup quota: containers, batch schedulers) or shares them with its data-loading workers or other
``torchrun`` processes, more threads than free cores stall every parallel region on a descheduled thread:
on a 2-core machine with one core busy, 2-thread training ran at about 1 image/s against 123 with one
thread. So the default is one thread per core left to this process, at least one.

A waiting thread spins briefly, then sleeps: ``import boat_vit`` sets ``OMP_WAIT_POLICY=PASSIVE`` and
``GOMP_SPINCOUNT=2000`` unless the environment sets either or torch was imported first (OpenMP reads them
once, as torch loads). A thread that finishes its share of an operation early then waits tens of microseconds
on its core for the others, enough for the next operation of a small model to start without a wake-up, and
then leaves the core: on a core another process keeps busy, a thread that spins longer fights it, and every
operation waits for the late thread; a sleeping one frees its core, and the kernel moves the late thread to it.
Measured on the digits demo (3-epoch runs, quiet 2-core machine, images/s quiet and with one core busy):
sleeping at once 157-180 and 121-133; spinning 2000 times 192-211 and 108; GNU OpenMP's default spin
(300000) 238 and 64.
"""
import math
import os
from pathlib import Path
from typing import Optional

import torch

from .._startup import SPIN_COUNT, WAIT_SETTINGS
from ..errors import Argument, ConfigError

__all__ = ["SPIN_COUNT", "WAIT_SETTINGS", "default_threads", "set_threads", "usable_cores"]

_CGROUP_V2_QUOTA = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
_CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def _cgroup_cores() -> Optional[float]:
    """Cores the cgroup quota allows (``None``: no quota, or none readable)."""
    try:
        if _CGROUP_V2_QUOTA.is_file():
            quota, period = _CGROUP_V2_QUOTA.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        if _CGROUP_V1_QUOTA.is_file():
            quota = int(_CGROUP_V1_QUOTA.read_text())
            return None if quota <= 0 else quota / int(_CGROUP_V1_PERIOD.read_text())
    except (OSError, ValueError):
        return None
    return None


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup quota (at least one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_cores()
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def default_threads(workers: int = 0, processes: int = 1) -> int:
    """Intra-op threads for one of ``processes`` processes on this machine, each with ``workers`` data workers."""
    return max(1, usable_cores() // max(1, processes) - workers)


def set_threads(threads: Optional[int] = None, workers: int = 0, processes: int = 1) -> int:
    """Sets torch's intra-op threads: ``threads`` if given, else :func:`default_threads` unless the
    ``OMP_NUM_THREADS`` environment variable already chose; returns the number in effect."""
    if threads is not None:
        if threads < 1:
            raise ConfigError(Argument("threads"), f" must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(default_threads(workers, processes))
    return torch.get_num_threads()
