"""UperNet + BOAT-Swin-T against UperNet + the same Swin-T with FSLA off, whole segmenter and encoder alone.

Both segmenters are the ADE20K configuration (150 classes, UperNet width 512, no auxiliary head: inference)
and differ only in ``fsla_stages``. The four contenders (two segmenters, and their encoders alone: the
backbone's feature maps, no decoder) are timed in one interleaved run (:func:`boat_vit.bench.time_interleaved`);
throughput is ``batch / median time`` and each ratio is the median of the per-repeat ratios against the
BOAT contender of the same kind. Peak memory is measured for each segmenter in a fresh process
(:func:`boat_vit.bench.run_isolated`: one warm-up forward, then the peak resident size over one more
forward above the resident size before the model was built).

Usage: ``python benchmarks/bench_segmentation.py [--size 512 512] [--batch-size 1] [--repeats 5] [--threads 1]``.
"""
import argparse

import torch

from boat_vit.bench import (
    ALLOCATOR_HELP,
    ALLOCATORS,
    count_macs,
    environment,
    machine_line,
    markdown_table,
    peak_bytes,
    report_path,
    resident_bytes,
    run_isolated,
    time_interleaved,
    use_allocator,
    write_json,
)
from boat_vit.seg import BoatUPerNet

BACKBONE = "boat_swin_tiny_patch4_window7_224"
VARIANTS = {  # name -> backbone keyword arguments
    "BOAT-Swin-T": dict(fsla_stages=True),
    "Swin-T (FSLA off)": dict(fsla_stages=False),
}
NUM_CLASSES = 150  # ADE20K
MIB = 2**20
COLUMNS = (
    ("model", "model", "{}"),
    ("params_m", "params (M)", "{:.2f}"),
    ("gmacs", "GMACs/img", "{:.1f}"),
    ("images_per_s", "img/s", "{:.2f}"),
    ("seconds_per_batch", "s/batch", "{:.2f}"),
    ("peak_memory_mib", "peak MiB", "{:.0f}"),
    ("time_ratio", "time vs FSLA off", "{:.2f}x"),
)


def build(variant: str) -> BoatUPerNet:
    torch.manual_seed(0)
    return BoatUPerNet(BACKBONE, NUM_CLASSES, VARIANTS[variant], aux_channels=0).eval()


def peak_memory(variant: str, batch: int, size: tuple[int, int]) -> int:
    """Bytes above the process before the model at the peak of one (warm) forward; run it isolated."""
    torch.set_grad_enabled(False)
    baseline = resident_bytes()
    model, images = build(variant), torch.randn(batch, 3, *size)
    model(images)
    return peak_bytes(lambda: model(images), baseline)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), help="input height width (default 512 512)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward (default 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards per contender (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed forwards per contender (default 5)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: PyTorch's choice)")
    parser.add_argument("--allocator", choices=ALLOCATORS, default="retain", help=ALLOCATOR_HELP)
    parser.add_argument("--json", type=report_path, help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    allocator = use_allocator(args.allocator)
    size = tuple(args.size)

    names = list(VARIANTS)
    models = [build(name) for name in names]
    images = torch.randn(args.batch_size, 3, *size)
    contenders = [(f"UperNet + {name}", model) for name, model in zip(names, models)]
    contenders += [(f"{name} encoder", model.upernet.encoder) for name, model in zip(names, models)]
    gmacs = [count_macs(module, images[:1]) / 1e9 for _, module in contenders]
    params = [sum(p.numel() for p in module.parameters()) / 1e6 for _, module in contenders]
    with torch.inference_mode():
        timings = time_interleaved([lambda m=module: m(images) for _, module in contenders], args.repeats,
                                   args.warmup)
    del models, contenders[:]
    memory = [run_isolated(peak_memory, name, args.batch_size, size, threads=torch.get_num_threads()) / MIB
              for name in names]

    info = environment()
    print(f"inference forward, batch {args.batch_size} at {size[0]}x{size[1]}, float32, allocator {allocator}; "
          f"{machine_line(info)}, torch {info['torch']}, {info['date']}; {args.warmup} warm-up + {args.repeats} "
          "interleaved timed forwards per contender")
    labels = [f"UperNet + {name}" for name in names] + [f"{name} encoder" for name in names]
    rows = []
    for index, label in enumerate(labels):
        off = index | 1  # the FSLA-off contender of the same kind (whole segmenter or encoder)
        latency = timings.median(index)
        rows.append(dict(model=label, params_m=params[index], gmacs=gmacs[index],
                         images_per_s=args.batch_size / latency, seconds_per_batch=latency,
                         peak_memory_mib=memory[index] if index < len(names) else None,
                         time_ratio=timings.ratio(index, baseline=off), seconds=timings.seconds[index]))
    print(markdown_table(rows, COLUMNS))
    if args.json:
        write_json(dict(environment=info, size=size, batch_size=args.batch_size, results=rows), args.json)


if __name__ == "__main__":
    main()
