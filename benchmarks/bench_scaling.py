"""How attention cost grows with the token count: FSLA vs window attention vs global attention.

One layer of each over square token maps of side 7, 14, 28, 56, 112 and 224 (49 to 50,176 tokens), C=96,
3 heads (BOAT-Swin-T's first stage):

* ``fsla``: :class:`boat_vit.FeatureSpaceLocalAttention` (groups of 49, overlap 20, value convolution);
* ``window``: timm's ``WindowAttention`` in 7x7 windows, with the window partition and its reverse;
* ``global``: the same qkv and output projections around one ``scaled_dot_product_attention`` over all
  tokens.

Per map size: one warm-up forward of each, one forward to measure memory, then timed rounds of one
forward each (:func:`boat_vit.bench.time_interleaved`; at least ``--repeats`` rounds, more for small maps;
medians reported, ratios as medians of per-round ratios). Peak memory: the resident memory one forward adds
on top of its input (:func:`boat_vit.bench.peak_bytes`; the process releases freed memory at once,
:func:`boat_vit.bench.release_freed_memory`, so all three pay their page faults here).

Default batch 1: the largest global attention (50,176 tokens, about 1 TFLOP) takes about 30 s per forward
on one core and the whole sweep about 3 minutes. On a machine shared with other jobs use ``--threads 1``:
with more threads than free cores, every parallel region waits for descheduled threads (tens of ms each).

Writes a markdown table (printed and next to the plot as ``.md``) and a log-log plot of time and peak
memory against tokens to ``--output``.

Usage: ``python benchmarks/bench_scaling.py [--output benchmarks/results/scaling.png] [--repeats 3]``.
"""
import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.swin_transformer import WindowAttention, window_partition, window_reverse

from boat_vit import FeatureSpaceLocalAttention
from boat_vit.bench import (
    environment,
    machine_line,
    markdown_table,
    peak_bytes,
    release_freed_memory,
    report_path,
    time_interleaved,
)
from boat_vit.files import atomic_write, write_json, write_text

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
        calls = [lambda m=module: m(x) for module in contenders.values()]
        started = time.perf_counter()
        for call in calls:  # warm-up, and the cost of a round
            call()
        round_seconds = time.perf_counter() - started
        memory = [peak_bytes(call) for call in calls]
        timings = time_interleaved(calls, _rounds(repeats, round_seconds), warmup=0)
        row = dict(side=side, tokens=side * side, rounds=len(timings.seconds[0]))
        row.update({f"{name}_ms": timings.median(i) * 1e3 for i, name in enumerate(names)})
        row.update({f"{name}_mib": bytes_ / MIB for name, bytes_ in zip(names, memory)})
        row["fsla_over_window"] = timings.ratio(0, baseline=1)
        row["global_over_fsla"] = timings.ratio(2, baseline=0)
        rows.append(row)
        print(f"  {side}x{side}: " + ", ".join(f"{n} {row[f'{n}_ms']:.1f} ms" for n in names)
              + f" ({row['rounds']} rounds)", flush=True)
    return rows


COLUMNS = (
    ("side", "map", lambda side: f"{side}x{side}"),
    ("tokens", "tokens", "{}"),
    ("fsla_ms", "FSLA ms", "{:.2f}"),
    ("window_ms", "window ms", "{:.2f}"),
    ("global_ms", "global ms", "{:.2f}"),
    ("fsla_over_window", "FSLA / window", "{:.2f}x"),
    ("global_over_fsla", "global / FSLA", "{:.2f}x"),
    ("fsla_mib", "FSLA MiB", "{:.1f}"),
    ("window_mib", "window MiB", "{:.1f}"),
    ("global_mib", "global MiB", "{:.1f}"),
)


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
    atomic_write(path, lambda file: figure.savefig(file, format="png"))


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
    parser.add_argument("--json", type=report_path, help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if any(side % WINDOW for side in args.sides):
        parser.error(f"--sides must be multiples of the window ({WINDOW})")

    released = release_freed_memory()
    info = environment()
    subtitle = f"{machine_line(info)}, torch {info['torch']}, fp32, batch {args.batch_size}, {info['date']}"
    print(f"{subtitle}{'' if released else ' (freed memory not released: memory figures may be low)'}")
    rows = sweep(tuple(args.sides), args.batch_size, args.repeats)
    table = markdown_table(rows, COLUMNS)
    print("\n" + table)
    output = Path(args.output)
    plot(rows, output, subtitle)
    write_text(output.with_suffix(".md"), f"{subtitle}\n\n{table}\n")
    if args.json:
        write_json(args.json, dict(environment=info, batch_size=args.batch_size, rows=rows))
    print(f"\nwrote {output} and {output.with_suffix('.md')}")


if __name__ == "__main__":
    main()
