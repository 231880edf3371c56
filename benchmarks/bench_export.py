"""onnxruntime against eager PyTorch on CPU for the BOAT families, as ratios measured in one run.

Each model is exported to ONNX once (dynamic batch, :func:`boat_vit.export.export_model`, which checks it) and its
largest difference from eager PyTorch on random batches is reported. Then, per batch size, eager PyTorch
(``torch.inference_mode``, eval mode) and onnxruntime (CPU execution provider, the same thread count) are
timed interleaved (:func:`boat_vit.bench.time_interleaved`), so the drift of a shared machine hits both
alike. Reported: median images/s of each and the median of the per-repeat speed ratios (onnxruntime / eager;
above 1 means onnxruntime is faster).

Measure on a quiet machine (``uptime``), with threads pinned (``--threads``, default: torch's).

Usage: ``python benchmarks/bench_export.py [--models boat_swin_t boat_cswin_t] [--batches 1 8]
[--repeats 10] [--threads N] [--json PATH]``.
"""
import argparse
import tempfile
from pathlib import Path

import timm
import torch

from boat_vit.bench import environment, machine_line, markdown_table, report_path, time_interleaved, write_json
from boat_vit.export import export_model, load_exported, max_difference

MODELS = {"boat_swin_t": "boat_swin_tiny_patch4_window7_224", "boat_cswin_t": "boat_cswin_tiny_224"}
DEFAULT_BATCHES = (1, 8)
DEFAULT_SIZE = 224
DEFAULT_REPEATS = 10
DEFAULT_WARMUP = 2
EXPORT_BATCH = 2  # example batch of the export (the exported batch dimension is dynamic)
COLUMNS = (
    ("model", "model", "{}"),
    ("batch", "batch", "{}"),
    ("eager_img_s", "eager img/s", "{:.2f}"),
    ("onnxruntime_img_s", "onnxruntime img/s", "{:.2f}"),
    ("ratio", "onnxruntime / eager", "{:.2f}x"),
    ("max_difference", "max |difference|", "{:.1e}"),
)


def bench_model(key: str, batches: list[int], size: int, repeats: int, warmup: int, threads: int) -> list[dict]:
    """Exports one model and times eager PyTorch against onnxruntime at every batch size."""
    torch.manual_seed(0)
    model = timm.create_model(MODELS[key], img_size=size).eval()
    with tempfile.TemporaryDirectory() as folder:
        path = export_model(model, "onnx", Path(folder) / f"{key}.onnx", torch.randn(EXPORT_BATCH, 3, size, size),
                            dynamic_batch=True).path
        run_onnx = load_exported(path, "onnx", threads)
        rows = []
        for batch in batches:
            images = torch.randn(batch, 3, size, size)
            with torch.inference_mode():
                difference = max_difference(model(images), run_onnx(images))
                timings = time_interleaved([lambda: model(images), lambda: run_onnx(images)], repeats, warmup)
            rows.append(dict(model=key, batch=batch, eager_img_s=batch / timings.median(0),
                             onnxruntime_img_s=batch / timings.median(1), ratio=timings.speedup(1),
                             max_difference=difference))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=list(DEFAULT_BATCHES))
    parser.add_argument("--img-size", type=int, default=DEFAULT_SIZE)
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="PyTorch and onnxruntime")
    parser.add_argument("--json", type=report_path, help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [row for key in args.models
            for row in bench_model(key, args.batches, args.img_size, args.repeats, args.warmup, args.threads)]
    info = environment()
    print(f"{machine_line(info)}, torch {info['torch']}, {args.img_size}x{args.img_size}, float32, {info['date']}")
    print(markdown_table(rows, COLUMNS))
    if args.json:
        write_json(dict(environment=info, img_size=args.img_size, rows=rows), args.json)


if __name__ == "__main__":
    main()
