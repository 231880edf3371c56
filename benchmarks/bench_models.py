"""Whole-model speed of BOAT models against their baselines, as ratios measured in one run.

For every pair (BOAT model, baseline) and mode, the two models are timed interleaved
(:func:`boat_vit.bench.time_interleaved`: the order swaps every repeat), so the drift of a shared machine
hits both alike. Reported: median images/s of each and the median of the per-repeat throughput ratios
(BOAT / baseline).

* ``inference``: forward under ``torch.inference_mode`` in eval mode. Target ratio >= 0.80.
* ``train``: forward, cross-entropy loss and backward in train mode. Target ratio >= 0.75.

Defaults: batch 8, 224x224, float32, CPU. Add a comparison by adding an entry to :data:`PAIRS`.

Timings run with freed memory kept in the process (``--allocator retain``, see
:mod:`boat_vit.bench.memory`); ``--allocator glibc`` keeps the C library's default.

Usage: ``python benchmarks/bench_models.py [--pairs boat_swin_t] [--modes inference train] [--repeats 10]
[--allocator retain|glibc]``.
"""
import argparse
from dataclasses import dataclass, field
from typing import Any, Callable

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from boat_vit.bench import (
    ALLOCATOR_HELP,
    ALLOCATORS,
    environment,
    machine_line,
    markdown_table,
    report_path,
    time_interleaved,
    use_allocator,
)
from boat_vit.files import write_json


@dataclass(frozen=True)
class Pair:
    """A BOAT model and the baseline it is compared with (timm names and constructor arguments)."""

    model: str
    baseline: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    baseline_kwargs: dict[str, Any] = field(default_factory=dict)


PAIRS: dict[str, Pair] = {
    "boat_swin_t": Pair("boat_swin_tiny_patch4_window7_224", "swin_tiny_patch4_window7_224"),
    # our CSWin-T is the same model with FSLA off (timm has no CSWin)
    "boat_cswin_t": Pair("boat_cswin_tiny_224", "boat_cswin_tiny_224", baseline_kwargs=dict(fsla_stages=False)),
}
TARGETS: dict[str, float] = {"inference": 0.80, "train": 0.75}
NUM_CLASSES = 1000
DEFAULT_BATCH = 8
DEFAULT_SIZE = 224
DEFAULT_REPEATS = 10
DEFAULT_WARMUP = 2


def _step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mode: str) -> Callable[[], None]:
    """One timed pass of ``model`` in ``mode``."""
    if mode == "inference":
        model.eval()

        def run() -> None:
            with torch.inference_mode():
                model(images)

    else:
        model.train()

        def run() -> None:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), labels).backward()

    return run


def bench_pair(pair: Pair, mode: str, batch: int, size: int, repeats: int, warmup: int) -> dict[str, Any]:
    """Times a pair interleaved; returns images/s (medians) and the median throughput ratio."""
    torch.manual_seed(0)
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(NUM_CLASSES, (batch,))
    runs = [
        _step(timm.create_model(name, num_classes=NUM_CLASSES, img_size=size, **kwargs), images, labels, mode)
        for name, kwargs in ((pair.model, pair.model_kwargs), (pair.baseline, pair.baseline_kwargs))
    ]
    timings = time_interleaved(runs, repeats, warmup)
    return dict(
        model=pair.model,
        baseline=pair.baseline,
        mode=mode,
        model_images_per_s=batch / timings.median(0),
        baseline_images_per_s=batch / timings.median(1),
        ratio=timings.ratio(1),
        target=TARGETS[mode],
    )


COLUMNS = (
    ("model", "model", "{}"),
    ("baseline", "baseline", "{}"),
    ("mode", "mode", "{}"),
    ("model_images_per_s", "model img/s", "{:.2f}"),
    ("baseline_images_per_s", "baseline img/s", "{:.2f}"),
    ("ratio", "ratio", "{:.3f}"),
    ("verdict", "target", "{}"),
)


def with_verdict(row: dict[str, Any]) -> dict[str, Any]:
    """The row with a ``verdict`` cell: the target and whether the ratio meets it."""
    met = "met" if row["ratio"] >= row["target"] else "MISSED"
    return dict(row, verdict=f">= {row['target']:.2f} ({met})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", choices=sorted(PAIRS), default=sorted(PAIRS))
    parser.add_argument("--modes", nargs="+", choices=sorted(TARGETS), default=["inference", "train"])
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE)
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", type=report_path, help="also write the rows to this JSON file")
    parser.add_argument("--allocator", choices=ALLOCATORS, default="retain", help=ALLOCATOR_HELP)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    allocator = use_allocator(args.allocator)
    info = environment()

    rows = [
        bench_pair(PAIRS[name], mode, args.batch, args.size, args.repeats, args.warmup)
        for name in args.pairs
        for mode in args.modes
    ]
    print(f"{machine_line(info)}, torch {info['torch']}, timm {info['timm']}, batch {args.batch}, "
          f"{args.size}x{args.size}, float32, {args.repeats} interleaved repeats, allocator {allocator}, {info['date']}")
    print(markdown_table([with_verdict(row) for row in rows], COLUMNS))
    if args.json:
        write_json(args.json, rows)


if __name__ == "__main__":
    main()
