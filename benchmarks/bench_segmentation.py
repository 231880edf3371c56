"""UperNet + BOAT-Swin-T against UperNet + the same Swin-T with FSLA off, in one run.

Both segmenters are the ADE20K configuration (150 classes, UperNet width 512, no auxiliary head: inference)
and differ only in ``fsla_stages``. After warm-up, the timed inference forwards alternate between the two
(the order flips every repeat), so drift of a shared machine hits both alike; throughput is ``batch /
median time`` and the ratio is the median of the per-repeat ratios. Peak memory is measured for each model
in a fresh process (one warm-up forward, then the peak resident size over one more forward minus the
resident size before the model was built; see :mod:`boat_vit.bench`).

Usage: ``python benchmarks/bench_segmentation.py [--size 512 512] [--batch-size 2] [--repeats 5]``.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from boat_vit.bench import MEMORY_MMAP_THRESHOLD, MIB, count_macs, reset_peak_resident, resident_bytes
from boat_vit.seg import BoatUPerNet

BACKBONE = "boat_swin_tiny_patch4_window7_224"
VARIANTS = {  # name -> backbone keyword arguments
    "UperNet + BOAT-Swin-T": dict(fsla_stages=True),
    "UperNet + Swin-T (FSLA off)": dict(fsla_stages=False),
}
NUM_CLASSES = 150  # ADE20K


def build(name: str) -> BoatUPerNet:
    torch.manual_seed(0)
    return BoatUPerNet(BACKBONE, NUM_CLASSES, VARIANTS[name], aux_channels=0).eval()


def forward(model: BoatUPerNet, images: torch.Tensor) -> None:
    with torch.inference_mode():
        model(images)


def peak_memory_here(name: str, batch: int, size: tuple[int, int]) -> int:
    """Bytes added at the peak of one forward of ``name`` in this fresh process."""
    torch.zeros(1).add_(1)  # initialise the runtime before the baseline
    reset_peak_resident()
    baseline = resident_bytes()
    model, images = build(name), torch.randn(batch, 3, *size)
    forward(model, images)
    reset_peak_resident()
    forward(model, images)
    return resident_bytes(peak=True) - baseline


def peak_memory(name: str, batch: int, size: tuple[int, int]) -> int:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MEMORY_MMAP_THRESHOLD))
    command = [sys.executable, __file__, "--memory-of", name, "--batch-size", str(batch), "--size", *map(str, size),
               "--threads", str(torch.get_num_threads())]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"memory measurement of {name} failed:\n{result.stderr[-2000:]}")
    return int(result.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), help="input height width (default 512 512)")
    parser.add_argument("--batch-size", type=int, default=2, help="images per forward (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards per model (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed forwards per model (default 5)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--memory-of", choices=sorted(VARIANTS), help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = tuple(args.size)
    if args.memory_of:
        print(peak_memory_here(args.memory_of, args.batch_size, size))
        return

    names = list(VARIANTS)
    models = [build(name) for name in names]
    images = torch.randn(args.batch_size, 3, *size)
    gmacs = [count_macs(model, images[:1]) / 1e9 for model in models]
    for _ in range(args.warmup):
        for model in models:
            forward(model, images)
    seconds = [[0.0] * args.repeats for _ in models]
    for repeat in range(args.repeats):
        for offset in range(len(models)):
            index = (repeat + offset) % len(models)
            start = time.perf_counter()
            forward(models[index], images)
            seconds[index][repeat] = time.perf_counter() - start
    params = [sum(p.numel() for p in model.parameters()) / 1e6 for model in models]
    del models
    memory = [peak_memory(name, args.batch_size, size) / MIB for name in names]

    print(f"inference forward, batch {args.batch_size} at {size[0]}x{size[1]}, float32, {args.threads} threads, "
          f"torch {torch.__version__}; {args.warmup} warm-up + {args.repeats} interleaved timed forwards per model")
    print("| model | params (M) | GMACs/img | img/s | s/batch | peak MiB | img/s vs BOAT |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for name, times, count, p, mib in zip(names, seconds, gmacs, params, memory):
        latency = statistics.median(times)
        ratio = statistics.median(first / own for first, own in zip(seconds[0], times))
        rows.append(dict(model=name, params_m=p, gmacs=count, images_per_s=args.batch_size / latency,
                         seconds_per_batch=latency, peak_memory_mib=mib, throughput_ratio=ratio, seconds=times))
        print(f"| {name} | {p:.2f} | {count:.1f} | {args.batch_size / latency:.2f} | {latency:.2f} | {mib:.0f} | "
              f"{ratio:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(size=size, batch_size=args.batch_size, threads=args.threads, results=rows), f, indent=2)


if __name__ == "__main__":
    main()
