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

Timings go through :func:`boat_vit.bench.time_interleaved` with ``--allocator retain`` unless told otherwise:
freed memory stays in the process (:mod:`boat_vit.bench.memory`), so neither contender pays page faults for
recycled buffers; ``--allocator glibc`` keeps the C library's default, whose page-fault costs depend on what
the process allocated before and swing a ratio by a third between runs.

Usage: ``python benchmarks/bench_fsla.py [--sections window growth global memory] [--repeats 15]
[--allocator retain|glibc]``.
"""
import argparse
from typing import Callable

import torch
from timm.models.swin_transformer import WindowAttention, window_partition

from bench_scaling import GlobalAttention  # the same baseline as the scaling sweep
from boat_vit import FeatureSpaceLocalAttention
from boat_vit.bench import (
    ALLOCATOR_HELP,
    ALLOCATORS,
    environment,
    machine_line,
    markdown_table,
    peak_bytes,
    report_path,
    run_isolated,
    time_interleaved,
    use_allocator,
)
from boat_vit.files import write_json

WINDOW = 7
WINDOW_CASES = ((56, 96, 3), (28, 192, 6))  # (side, channels, heads)
GROWTH_SIDES = (56, 224)
GLOBAL_SIDE = 112
MEMORY_SIDES = (56, 112, 224)
WARMUP = 2
MIB = 2**20


@torch.inference_mode()
def interleaved(first: Callable[[], object], second: Callable[[], object], repeats: int) -> dict:
    """Times two callables interleaved; returns medians (ms) and the median ratio second / first."""
    timings = time_interleaved([first, second], repeats, WARMUP)
    return dict(first_ms=timings.median(0) * 1e3, second_ms=timings.median(1) * 1e3, ratio=timings.ratio(1))


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


def _peak_forward_bytes(side: int, batch: int) -> int:
    """Peak resident memory of one FSLA forward above the resident memory before it (run isolated)."""
    torch.set_grad_enabled(False)
    fsla = FeatureSpaceLocalAttention(96, 3).eval()
    fsla(torch.randn(1, 14, 14, 96))  # load kernels before measuring
    x = torch.randn(batch, side, side, 96)
    return peak_bytes(lambda: fsla(x))


def bench_memory(batch: int) -> list[dict]:
    rows = []
    for side in MEMORY_SIDES:
        peak = run_isolated(_peak_forward_bytes, side, batch, threads=torch.get_num_threads())
        tokens = batch * side * side
        rows.append(dict(case=f"N={side * side}", peak_mib=peak / MIB, bytes_per_token=peak / tokens))
    first = rows[0]["bytes_per_token"]
    for row in rows:
        row["per_token_vs_smallest"] = row["bytes_per_token"] / first
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=["window", "growth", "global", "memory"],
                        choices=["window", "growth", "global", "memory"], help="what to measure")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward")
    parser.add_argument("--repeats", type=int, default=15, help="timed pairs for the small cases")
    parser.add_argument("--json", type=report_path, help="also write the results to this JSON file")
    parser.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's choice)")
    parser.add_argument("--allocator", choices=ALLOCATORS, default="retain", help=ALLOCATOR_HELP)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    allocator = use_allocator(args.allocator)
    info = environment()

    print(f"{machine_line(info)}, torch {info['torch']}, fp32, batch {args.batch_size}, allocator {allocator}, "
          f"{info['date']}\n")
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
        print(f"### {title}\n\n{markdown_table(results[name])}\n", flush=True)
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
