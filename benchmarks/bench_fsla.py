"""Speed and memory of the FSLA layer, as ratios against baselines measured in the same run.

The machine is noisy, so every comparison alternates the two contenders repeat by repeat and reports the
median of the per-repeat ratios. Sections:

* ``window``: FSLA vs timm's ``WindowAttention`` (window 7, same dim, heads and tokens) at 56x56/C96/3 heads
  and 28x28/C192/6 heads. Target: FSLA time <= 2.0x.
* ``growth``: FSLA time per token at 224x224 tokens (N = 50176) vs 56x56 (N = 3136). Target: <= 1.5x.
* ``global``: global attention with the same projections (SDPA over all N tokens) vs FSLA at 112x112
  (N = 12544). Target: FSLA >= 5x faster.
* ``memory``: peak resident memory of one FSLA forward above the memory before it, per token, at N = 3136,
  12544, 50176 (each in a fresh process, measured as ``boat-vit bench`` does). Linear growth means a
  constant per-token figure.

Timings run with ``--allocator retain`` unless told otherwise: freed memory stays in the process
(:func:`boat_vit.bench.retain_freed_memory`), so neither contender pays page faults for recycled buffers;
``--allocator glibc`` keeps the C library's default, whose page-fault costs depend on what the process
allocated before and swing a ratio by a third between runs.

Usage: ``python benchmarks/bench_fsla.py [--sections window growth global memory] [--repeats 15]
[--allocator retain|glibc]``.
"""
import argparse
import json
import multiprocessing
import os
import platform
import statistics
import time
from typing import Callable

import torch
from timm.models.swin_transformer import WindowAttention, window_partition

from bench_scaling import GlobalAttention  # the same baseline as the scaling sweep
from boat_vit import FeatureSpaceLocalAttention
from boat_vit.bench import (
    add_allocator_option,
    MEMORY_MMAP_THRESHOLD,
    reset_peak_resident,
    resident_bytes,
    use_allocator,
)

WINDOW = 7
WINDOW_CASES = ((56, 96, 3), (28, 192, 6))  # (side, channels, heads)
GROWTH_SIDES = (56, 224)
GLOBAL_SIDE = 112
MEMORY_SIDES = (56, 112, 224)
WARMUP = 2


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@torch.inference_mode()
def interleaved(first: Callable[[], object], second: Callable[[], object], repeats: int) -> dict:
    """Times two callables alternately; returns medians (ms) and the median ratio second / first."""
    for _ in range(WARMUP):
        first(), second()
    pairs = [(_seconds(first), _seconds(second)) for _ in range(repeats)]
    return dict(
        first_ms=statistics.median(a for a, _ in pairs) * 1e3,
        second_ms=statistics.median(b for _, b in pairs) * 1e3,
        ratio=statistics.median(b / a for a, b in pairs),
    )


def bench_window(batch: int, repeats: int) -> list[dict]:
    rows = []
    for side, dim, heads in WINDOW_CASES:
        x = torch.randn(batch, side, side, dim)
        windows = window_partition(x, (WINDOW, WINDOW)).view(-1, WINDOW * WINDOW, dim)
        window_attn = WindowAttention(dim, heads, window_size=WINDOW).eval()
        fsla = FeatureSpaceLocalAttention(dim, heads).eval()
        result = interleaved(lambda: window_attn(windows), lambda: fsla(x), repeats)
        rows.append(
            dict(case=f"{side}x{side} C{dim} h{heads}", window_ms=result["first_ms"], fsla_ms=result["second_ms"],
                 fsla_over_window=result["ratio"], target="<= 2.0")
        )
    return rows


def bench_growth(batch: int, repeats: int) -> list[dict]:
    small, large = GROWTH_SIDES
    fsla = FeatureSpaceLocalAttention(96, 3).eval()
    x_small, x_large = torch.randn(batch, small, small, 96), torch.randn(batch, large, large, 96)
    result = interleaved(lambda: fsla(x_small), lambda: fsla(x_large), max(3, repeats // 3))
    per_token_ratio = result["ratio"] * small**2 / large**2
    return [
        dict(case=f"N={small**2} vs N={large**2}, C96 h3", small_ms=result["first_ms"], large_ms=result["second_ms"],
             per_token_large_over_small=per_token_ratio, target="<= 1.5")
    ]


def bench_global(batch: int, repeats: int) -> list[dict]:
    side = GLOBAL_SIDE
    x = torch.randn(batch, side, side, 96)
    fsla, full = FeatureSpaceLocalAttention(96, 3).eval(), GlobalAttention(96, 3).eval()
    result = interleaved(lambda: fsla(x), lambda: full(x), max(3, repeats // 5))
    return [
        dict(case=f"N={side**2} C96 h3", fsla_ms=result["first_ms"], global_ms=result["second_ms"],
             global_over_fsla=result["ratio"], target=">= 5")
    ]


def _peak_forward_bytes(side: int, batch: int, queue) -> None:
    """Child process: peak resident memory of one forward above the resident memory before it (Linux)."""
    torch.set_grad_enabled(False)
    fsla = FeatureSpaceLocalAttention(96, 3).eval()
    fsla(torch.randn(1, 14, 14, 96))  # load kernels before measuring
    x = torch.randn(batch, side, side, 96)
    if not reset_peak_resident():
        raise OSError("peak resident memory cannot be reset here (needs Linux /proc/self/clear_refs)")
    before = resident_bytes()
    fsla(x)
    queue.put(resident_bytes(peak=True) - before)


def bench_memory(batch: int) -> list[dict]:
    # freed buffers return to the system, so the peak is the forward's own (as `boat-vit bench` measures)
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(MEMORY_MMAP_THRESHOLD)
    context = multiprocessing.get_context("spawn")
    rows = []
    for side in MEMORY_SIDES:
        queue = context.Queue()
        child = context.Process(target=_peak_forward_bytes, args=(side, batch, queue))
        child.start()
        peak = queue.get()
        child.join()
        tokens = batch * side * side
        rows.append(dict(case=f"N={side * side}", peak_mib=peak / 2**20, bytes_per_token=peak / tokens))
    first = rows[0]["bytes_per_token"]
    for row in rows:
        row["per_token_vs_smallest"] = row["bytes_per_token"] / first
    return rows


def markdown(title: str, rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = [f"### {title}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=["window", "growth", "global", "memory"],
                        choices=["window", "growth", "global", "memory"], help="what to measure")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward")
    parser.add_argument("--repeats", type=int, default=15, help="timed pairs for the small cases")
    parser.add_argument("--json", help="also write the results to this JSON file")
    add_allocator_option(parser)
    args = parser.parse_args()
    allocator = use_allocator(args.allocator)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"fp32, batch {args.batch_size}, allocator {allocator}\n")
    results = {}
    sections = {
        "window": ("FSLA vs timm WindowAttention", lambda: bench_window(args.batch_size, args.repeats)),
        "growth": ("FSLA time per token, large vs small map", lambda: bench_growth(args.batch_size, args.repeats)),
        "global": ("Global attention vs FSLA", lambda: bench_global(args.batch_size, args.repeats)),
        "memory": ("Peak memory of one FSLA forward", lambda: bench_memory(args.batch_size)),
    }
    for name in args.sections:
        title, run = sections[name]
        results[name] = run()
        print(markdown(title, results[name]) + "\n", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
