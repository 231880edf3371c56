"""How attention cost grows with the token count: FSLA vs window attention vs global attention.

One layer of each over square token maps of side 7, 14, 28, 56, 112 and 224 (49 to 50,176 tokens), C=96,
3 heads (BOAT-Swin-T's first stage):

* ``fsla``: :class:`boat_vit.FeatureSpaceLocalAttention` (groups of 49, overlap 20, value convolution);
* ``window``: timm's ``WindowAttention`` in 7x7 windows, with the window partition and its reverse;
* ``global``: the same qkv and output projections around one ``scaled_dot_product_attention`` over all
  tokens.

Per map size: one warm-up forward of each, one forward to measure memory, then timed rounds of one
forward each, round-robin (at least ``--repeats`` rounds, more for small maps; medians reported, ratios
as medians of per-round ratios). Peak memory: the resident memory one forward adds on
top of its input (Linux ``VmHWM`` reset just before the call; glibc's mmap threshold is fixed so that
freed buffers leave the process).

Default batch 1: the largest global attention (50,176 tokens, about 1 TFLOP) takes about 30 s per forward
on one core and the whole sweep about 3 minutes. On a machine shared with other jobs use ``--threads 1``:
with more threads than free cores, every parallel region waits for descheduled threads (tens of ms each).

Writes a markdown table (printed and next to the plot as ``.md``) and a log-log plot of time and peak
memory against tokens to ``--output``.

Usage: ``python benchmarks/bench_scaling.py [--output benchmarks/results/scaling.png] [--repeats 3]``.
"""
import argparse
import ctypes
import ctypes.util
import gc
import json
import math
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.swin_transformer import WindowAttention, window_partition, window_reverse

from boat_vit import FeatureSpaceLocalAttention
from boat_vit.bench import BenchConfig, environment, machine_line, reset_peak_resident, resident_bytes

SIDES = (7, 14, 28, 56, 112, 224)
DIM = 96
HEADS = 3
WINDOW = 7
DEFAULT_BATCH = 1
DEFAULT_REPEATS = 3  # timed rounds at least; cheap sizes get more
MIN_SECONDS = 3.0  # timed rounds per size last at least about this long ...
MAX_ROUNDS = 50  # ... with at most this many rounds
DEFAULT_OUTPUT = "benchmarks/results/scaling.png"
MIB = 2**20
_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD = 1 << 16
STYLES = {"fsla": ("FSLA (BOAT)", "tab:orange", "o"), "window": ("window 7x7 (Swin)", "tab:blue", "s"),
          "global": ("global (SDPA)", "tab:red", "^")}


class GlobalAttention(nn.Module):
    """Attention over all tokens of a ``(B, H, W, C)`` map with qkv and output projections."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, dim = x.shape
        qkv = self.qkv(x.reshape(batch, -1, dim)).view(batch, -1, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, -1, dim)
        return self.proj(out).view_as(x)


class WindowAttentionMap(nn.Module):
    """timm's ``WindowAttention`` applied to a ``(B, H, W, C)`` map: partition, attend, reverse."""

    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        self.window = (window, window)
        self.attn = WindowAttention(dim, num_heads, window_size=window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, dim = x.shape
        windows = window_partition(x, self.window).view(-1, self.window[0] * self.window[1], dim)
        out = self.attn(windows).view(-1, *self.window, dim)
        return window_reverse(out, self.window, height, width)


def _fix_mmap_threshold() -> bool:
    """Large allocations are mmapped and returned on free (glibc's adaptive threshold would keep them)."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name)
    return bool(getattr(libc, "mallopt", lambda *_: 0)(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _peak_added_bytes(fn: Callable[[], object]) -> float:
    """Resident bytes ``fn`` adds at its peak, or NaN where the system cannot tell."""
    gc.collect()
    if not reset_peak_resident():
        return float("nan")
    before = resident_bytes()
    fn()
    return resident_bytes(peak=True) - before


def _rounds(repeats: int, seconds_per_round: float) -> int:
    """At least ``repeats`` timed rounds, more for cheap sizes (``MIN_SECONDS`` in all, ``MAX_ROUNDS`` at most)."""
    return max(repeats, min(MAX_ROUNDS, math.ceil(MIN_SECONDS / max(seconds_per_round, 1e-9))))


@torch.inference_mode()
def sweep(sides: tuple[int, ...], batch: int, repeats: int) -> list[dict]:
    """Times and memory of every contender at every map side (module docstring).

    Ratios are medians of the per-round ratios, so drift of a shared machine cancels.
    """
    torch.manual_seed(0)
    contenders = {"fsla": FeatureSpaceLocalAttention(DIM, HEADS), "window": WindowAttentionMap(DIM, HEADS, WINDOW),
                  "global": GlobalAttention(DIM, HEADS)}
    for module in contenders.values():
        module.eval()
    names = list(contenders)
    rows = []
    for side in sides:
        x = torch.randn(batch, side, side, DIM)
        calls = {name: (lambda m=module: m(x)) for name, module in contenders.items()}
        warmup_seconds = sum(_seconds(call) for call in calls.values())
        memory = {name: _peak_added_bytes(call) for name, call in calls.items()}
        times = {name: [] for name in names}
        for round_ in range(_rounds(repeats, warmup_seconds)):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(_seconds(calls[name]))
        row = dict(side=side, tokens=side * side, rounds=len(times["fsla"]))
        row.update({f"{name}_ms": statistics.median(t) * 1e3 for name, t in times.items()})
        row.update({f"{name}_mib": bytes_ / MIB for name, bytes_ in memory.items()})
        row["fsla_over_window"] = statistics.median(f / w for f, w in zip(times["fsla"], times["window"]))
        row["global_over_fsla"] = statistics.median(g / f for g, f in zip(times["global"], times["fsla"]))
        rows.append(row)
        print(f"  {side}x{side}: " + ", ".join(f"{n} {row[f'{n}_ms']:.1f} ms" for n in names)
              + f" ({row['rounds']} rounds)", flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| map | tokens | FSLA ms | window ms | global ms | FSLA / window | global / FSLA | FSLA MiB | window MiB "
            "| global MiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['side']}x{r['side']} | {r['tokens']} | {r['fsla_ms']:.2f} | {r['window_ms']:.2f} | "
            f"{r['global_ms']:.2f} | {r['fsla_over_window']:.2f}x | {r['global_over_fsla']:.2f}x | "
            f"{r['fsla_mib']:.1f} | {r['window_mib']:.1f} | {r['global_mib']:.1f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, subtitle: str) -> None:
    """Log-log time and peak memory against tokens, one line per contender."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    figure = Figure(figsize=(10, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    tokens = [r["tokens"] for r in rows]
    panels = (("ms", "time per forward (ms)"), ("mib", "peak memory added (MiB)"))
    for axes, (suffix, label) in zip(figure.subplots(1, 2), panels):
        for name, (legend, colour, marker) in STYLES.items():
            points = [(n, r[f"{name}_{suffix}"]) for n, r in zip(tokens, rows) if r[f"{name}_{suffix}"] > 0]
            axes.plot(*zip(*points), label=legend, color=colour, marker=marker)
        axes.set(xscale="log", yscale="log", xlabel="tokens (square map)", ylabel=label)
        axes.set_xticks(tokens, labels=[str(n) for n in tokens])
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
    figure.suptitle(f"Attention cost vs tokens (C={DIM}, {HEADS} heads)\n{subtitle}", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help=f"PNG plot (default {DEFAULT_OUTPUT}); the table "
                                                                 "goes next to it as .md")
    parser.add_argument("--sides", type=int, nargs="+", default=list(SIDES), help="token map sides (multiples of 7)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH,
                        help=f"maps per forward (default {DEFAULT_BATCH})")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                        help=f"timed rounds per size at least (default {DEFAULT_REPEATS}); small maps get up to "
                             f"{MAX_ROUNDS} rounds, about {MIN_SECONDS:g} s")
    parser.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's choice); 1 gives stable "
                                                     "numbers on a machine shared with other jobs")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if any(side % WINDOW for side in args.sides):
        parser.error(f"--sides must be multiples of the window ({WINDOW})")

    fixed = _fix_mmap_threshold()
    info = environment(BenchConfig())
    subtitle = f"{machine_line(info)}, torch {info['torch']}, fp32, batch {args.batch_size}, {info['date']}"
    print(f"{subtitle}{'' if fixed else ' (malloc threshold not fixed: memory figures may be low)'}")
    rows = sweep(tuple(args.sides), args.batch_size, args.repeats)
    table = markdown(rows)
    print("\n" + table)
    output = Path(args.output)
    plot(rows, output, subtitle)
    output.with_suffix(".md").write_text(f"{subtitle}\n\n{table}\n")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(environment=info, batch_size=args.batch_size, rows=rows), indent=2))
    print(f"\nwrote {output} and {output.with_suffix('.md')}")


if __name__ == "__main__":
    main()
