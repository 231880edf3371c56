"""onnxruntime against eager PyTorch on CPU for the BOAT families, as ratios measured in one run.

Each model is exported to ONNX once (dynamic batch, :func:`boat_vit.export.export_model`) and checked against
eager PyTorch (:func:`boat_vit.export.check_export`) before any timing. Then, per batch size, eager PyTorch
(``torch.inference_mode``, eval mode) and onnxruntime (CPU execution provider, the same thread count) are
timed alternately, repeat by repeat, with the order swapped every repeat, so the drift of a shared machine
hits both alike. Reported: median images/s of each and the median of the per-repeat speed ratios
(onnxruntime / eager; above 1 means onnxruntime is faster).

Measure on a quiet machine (``uptime``), with threads pinned (``--threads``, default: torch's).

Usage: ``python benchmarks/bench_export.py [--models boat_swin_t boat_cswin_t] [--batches 1 8]
[--repeats 10] [--threads N] [--json PATH]``.
"""
import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import timm
import torch

import boat_vit.models  # noqa: F401  (registers the BOAT models)
from boat_vit.export import check_export, export_model, load_exported

MODELS: Dict[str, str] = {"boat_swin_t": "boat_swin_tiny_patch4_window7_224", "boat_cswin_t": "boat_cswin_tiny_224"}
DEFAULT_BATCHES = (1, 8)
DEFAULT_SIZE = 224
DEFAULT_REPEATS = 10
DEFAULT_WARMUP = 2
# example batch for the export (the exported batch dimension is dynamic)
EXPORT_BATCH = 2


def _onnxruntime_runner(path: Path, threads: int) -> Callable[[torch.Tensor], Any]:
    """An onnxruntime CPU session pinned to ``threads`` intra-op threads, as a callable on a torch batch."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return lambda images: session.run(None, {input_name: images.numpy()})


def _seconds(step: Callable[[], Any]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def _interleaved(steps: Dict[str, Callable[[], Any]], repeats: int, warmup: int) -> Dict[str, List[float]]:
    """Seconds per repeat of every step, run alternately with the order reversed every other repeat."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: Dict[str, List[float]] = {name: [] for name in steps}
    names = list(steps)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            times[name].append(_seconds(steps[name]))
    return times


def bench_model(key: str, batches: List[int], size: int, repeats: int, warmup: int, threads: int) -> List[dict]:
    """Exports one model, checks it, and times eager PyTorch against onnxruntime at every batch size."""
    torch.manual_seed(0)
    model = timm.create_model(MODELS[key], img_size=size).eval()
    example = torch.randn(EXPORT_BATCH, 3, size, size)
    with tempfile.TemporaryDirectory() as folder:
        path = export_model(model, "onnx", Path(folder) / f"{key}.onnx", example, dynamic_batch=True)
        difference = check_export(model, load_exported(path, "onnx"), [torch.randn(b, 3, size, size) for b in batches])
        run_onnx = _onnxruntime_runner(path, threads)
        rows = []
        for batch in batches:
            images = torch.randn(batch, 3, size, size)

            def eager() -> None:
                with torch.inference_mode():
                    model(images)

            times = _interleaved({"eager": eager, "onnxruntime": lambda: run_onnx(images)}, repeats, warmup)
            ratios = [e / o for e, o in zip(times["eager"], times["onnxruntime"])]
            rows.append(
                dict(
                    model=key,
                    batch=batch,
                    eager_img_s=batch / statistics.median(times["eager"]),
                    onnxruntime_img_s=batch / statistics.median(times["onnxruntime"]),
                    ratio=statistics.median(ratios),
                    max_difference=difference,
                )
            )
    return rows


def markdown_table(rows: List[dict]) -> str:
    lines = [
        "| model | batch | eager img/s | onnxruntime img/s | onnxruntime / eager (median of repeats) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['eager_img_s']:.2f} | {r['onnxruntime_img_s']:.2f} | {r['ratio']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=list(DEFAULT_BATCHES))
    parser.add_argument("--img-size", type=int, default=DEFAULT_SIZE)
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="PyTorch and onnxruntime")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for key in args.models:
        rows += bench_model(key, args.batches, args.img_size, args.repeats, args.warmup, args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.img_size}x{args.img_size}, float32, CPU")
    print(markdown_table(rows))
    if args.json:
        args.json.write_text(json.dumps(dict(threads=args.threads, img_size=args.img_size, rows=rows), indent=2))


if __name__ == "__main__":
    main()
