"""Interleaved timing: contenders take turns, so the drift of a shared machine slows them all alike.

After warm-up passes of every contender, each repeat runs every contender once, the order rotating by one
every repeat. A contender's time is the median over repeats; a ratio between two contenders is the median
of the per-repeat ratios, which cancels slow phases of the machine that hit one repeat.
"""
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

__all__ = ["Timings", "time_interleaved"]


@dataclass(frozen=True)
class Timings:
    """Seconds of every timed pass: ``seconds[contender][repeat]``."""

    seconds: tuple[tuple[float, ...], ...]

    def median(self, contender: int) -> float:
        """Median seconds of one pass of ``contender``."""
        return statistics.median(self.seconds[contender])

    def ratio(self, contender: int, baseline: int = 0) -> float:
        """Median over repeats of ``contender``'s time over ``baseline``'s (below 1: ``contender`` is faster)."""
        return statistics.median(own / base for own, base in zip(self.seconds[contender], self.seconds[baseline]))

    def speedup(self, contender: int, baseline: int = 0) -> float:
        """Median over repeats of ``baseline``'s time over ``contender``'s: a throughput ratio."""
        return statistics.median(base / own for own, base in zip(self.seconds[contender], self.seconds[baseline]))


def _synchronize(device: Optional[torch.device]) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step: Callable[[], object], device: Optional[torch.device]) -> float:
    _synchronize(device)
    start = time.perf_counter()
    step()
    _synchronize(device)
    return time.perf_counter() - start


def time_interleaved(
    steps: Sequence[Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    device: Optional[torch.device] = None,
) -> Timings:
    """Times ``steps`` (one pass each per repeat) interleaved, as the module docstring says.

    Args:
        steps: One callable per contender, running one pass.
        repeats: Timed passes of each contender.
        warmup: Untimed passes of each contender first.
        device: A CUDA device is synchronised around every timed pass.
    """
    if not steps or repeats < 1 or warmup < 0:
        raise ValueError(f"need at least one step, repeats >= 1 and warmup >= 0; got {len(steps)}, {repeats}, {warmup}")
    for _ in range(warmup):
        for step in steps:
            step()
    seconds = [[0.0] * repeats for _ in steps]
    for repeat in range(repeats):
        for offset in range(len(steps)):
            index = (repeat + offset) % len(steps)
            seconds[index][repeat] = _timed(steps[index], device)
    return Timings(tuple(map(tuple, seconds)))
