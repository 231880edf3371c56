"""What a CUDA machine must confirm, in one short run: ``python benchmarks/gpu_check.py`` (about 5-10 minutes).

Checks (each passes or fails; any failure makes the exit status 1):

* ``float64``: both families and one FSLA layer on the reference vectors of the released code
  (``tests/data/reference``) in float64, on the device and on the CPU: the device agrees with the CPU and
  both with the released code's outputs (BOAT-Swin logits, BOAT-CSWin stage-3 tokens, FSLA output), to
  :data:`EXACT`.
* ``amp-classification`` and ``amp-segmentation``: one short ``boat-vit train`` (the digits demo, one epoch;
  a tiny model on CPU) and ``boat-vit seg-train`` (generated shapes, a few iterations) with ``--amp`` on the device: float16 with a
  grad scaler on CUDA (bfloat16 on CPU); the run must finish and its losses be finite.
* ``compile``: ``torch.compile`` (Inductor) of a small model of each family: eval outputs agree with eager
  within :data:`COMPILE_TOLERANCE`, and a compiled training step under autocast gives finite gradients.

Then timing (reported, never judged): ``boat-vit bench`` of both tiny BOAT models against timm's Swin-T,
inference in float32 and with AMP, and an AMP training step.

``--device cpu`` is a smoke run of the same code on a CPU (one thread, a tiny classifier, small batches, few
repeats, no Inductor code generation; a few minutes): there the device-against-CPU comparison is trivially
exact, the rest is not. ``--only`` runs some checks (and ``timing``) by name.
"""
import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import timm
import torch
import torch.nn.functional as F

import boat_vit  # noqa: F401  (registers the models)
from boat_vit import FeatureSpaceLocalAttention
from boat_vit.models import boat_cswin, boat_swin

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))
from reference_vectors import load_reference  # noqa: E402
from tiny_data import SEG_TRAIN_ARGS, TINY_CSWIN, TINY_MODEL, TINY_RECIPE, TINY_SWIN, make_ade20k  # noqa: E402

EXACT = 1e-9  # float64 agreement, as in the exactness tests (measured on CPU: below 1e-14)
COMPILE_TOLERANCE = 1e-4  # float32 logits, compiled against eager
# Inductor on CUDA; the CPU smoke run traces through the same dynamo and AOTAutograd path without generating
# C++ (Inductor's CPU code is checked by the test suite; compiling a training step here took 15 minutes)
COMPILE_BACKEND = {"cuda": "inductor", "cpu": "aot_eager"}
RUN_TIMEOUT_S = 900  # one training or benchmark subprocess
SWIN, CSWIN, TIMM_SWIN = "boat_swin_tiny_patch4_window7_224", "boat_cswin_tiny_224", "swin_tiny_patch4_window7_224"
# the reference models of tests/data/reference, in our argument names
REFERENCE_MODELS = {
    "boat_swin_mini": (SWIN, boat_swin.checkpoint_filter_fn,
                       dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), num_classes=10)),
    "boat_cswin_mini": (CSWIN, boat_cswin.checkpoint_filter_fn,
                        dict(embed_dim=32, depths=(1, 2, 2, 1), num_heads=(2, 4, 8, 16), num_classes=10)),
}
FSLA_REFERENCE = "fsla_n784"
# The classification run: the digits demo on CUDA; on CPU a tiny model on the digits at 16x16, since bfloat16
# matmuls without bfloat16 instructions (AVX512-BF16, AMX) run several times slower than float32
CLASSIFICATION_RUN = {"cuda": ["--preset", "digits", "--workers", "0", "--no-progress"],
                      "cpu": [*TINY_MODEL, *TINY_RECIPE, "--data", "digits"]}
# (description, boat-vit bench options) on CUDA and on CPU (smoke)
BENCH_RUNS = {
    "cuda": [("inference, float32, batch 64", ["--batch-size", "64"]),
             ("inference, AMP float16, batch 64", ["--batch-size", "64", "--amp"]),
             ("training step, AMP float16, batch 32", ["--batch-size", "32", "--amp", "--train"])],
    "cpu": [("inference, float32, batch 1 (smoke)", ["--batch-size", "1", "--warmup", "1", "--repeats", "2",
                                                      "--no-memory"])],
}


class CheckFailed(Exception):
    """A check ran and found a wrong result."""


def _max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().cpu().double() - b.detach().cpu().double()).abs().max().item()


def _expect(name: str, difference: float, tolerance: float) -> str:
    if not difference <= tolerance:  # NaN fails too
        raise CheckFailed(f"{name} differs by {difference:.3g} > {tolerance:g}")
    return f"{name} {difference:.1e}"


def check_float64(device: torch.device, workdir: Path) -> str:
    """Reference vectors in float64: device against CPU, both against the released code."""
    results = []
    data = load_reference(FSLA_REFERENCE)
    layer = FeatureSpaceLocalAttention(data["config"]["dim"], data["config"]["num_heads"]).double()
    layer.load_state_dict({k: v.double() for k, v in data["state_dict"].items()})
    side = math.isqrt(data["input"].shape[1])
    x = data["input"].double().view(1, side, side, -1)
    with torch.no_grad():
        on_cpu = layer(x).view(data["output"].shape)
        on_device = layer.to(device)(x.to(device)).view(data["output"].shape)
    results.append(_expect("FSLA device-CPU", _max_difference(on_device, on_cpu), EXACT))
    results.append(_expect("FSLA-released", _max_difference(on_device, data["output"]), EXACT))

    for stem, (name, filter_fn, kwargs) in REFERENCE_MODELS.items():
        data = load_reference(stem)
        model = timm.create_model(name, **kwargs)
        model.load_state_dict(filter_fn(data["state_dict"], model))
        model = model.double().eval()
        images = data["input"].double()
        with torch.no_grad():
            cpu_logits = model(images)
            cpu_stage3 = model.forward_intermediates(images, indices=[2], intermediates_only=True)[0]
            model.to(device)
            logits = model(images.to(device))
            stage3 = model.forward_intermediates(images.to(device), indices=[2], intermediates_only=True)[0]
        family = "Swin" if name == SWIN else "CSWin"
        results.append(_expect(f"{family} logits device-CPU", _max_difference(logits, cpu_logits), EXACT))
        results.append(_expect(f"{family} stage 3 device-CPU", _max_difference(stage3, cpu_stage3), EXACT))
        if "stage3" in data:  # CSWin: the released stage-4 FSLA pairs images of a batch, so stage 3 is the oracle
            tokens = stage3.flatten(2).transpose(1, 2)
            results.append(_expect(f"{family} stage 3-released", _max_difference(tokens, data["stage3"]), EXACT))
        else:
            results.append(_expect(f"{family} logits-released", _max_difference(logits, data["output"]), EXACT))
    return "; ".join(results)


def _run(command: list[str]) -> None:
    """Runs ``python -m boat_vit COMMAND`` (one thread on CPU); a failure names the command and its last line."""
    threads = ["--threads", "1"] if "--device" in command and command[command.index("--device") + 1] == "cpu" else []
    result = subprocess.run([sys.executable, "-m", "boat_vit", *command, *threads], capture_output=True, text=True,
                            timeout=RUN_TIMEOUT_S)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["(no output)"]
        raise CheckFailed(f"boat-vit {command[0]} exited with {result.returncode}: {lines[-1]}")


def _finite_metrics(run: Path, columns: tuple[str, ...]) -> dict[str, float]:
    """The last row of a run's ``metrics.csv``; the given columns must be finite numbers."""
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise CheckFailed(f"{run / 'metrics.csv'} has no rows")
    last = {column: float(rows[-1][column]) for column in columns}
    bad = [column for column, value in last.items() if not math.isfinite(value)]
    if bad:
        raise CheckFailed(f"{run.name}: not finite: {', '.join(bad)}")
    return last


def check_amp_classification(device: torch.device, workdir: Path) -> str:
    """One epoch on the digits with AMP on the device."""
    run = workdir / "classification"
    _run(["train", *CLASSIFICATION_RUN[device.type], "--epochs", "1", "--amp", "--device", str(device),
          "--output", str(run)])
    row = _finite_metrics(run, ("train_loss", "val_loss", "top1", "images_per_s"))
    return (f"1 epoch: train loss {row['train_loss']:.3f}, val loss {row['val_loss']:.3f}, top-1 {row['top1']:.1f}%, "
            f"{row['images_per_s']:.0f} img/s")


def check_amp_segmentation(device: torch.device, workdir: Path) -> str:
    """A few UperNet iterations on generated shapes with AMP on the device."""
    run = workdir / "segmentation"
    iterations = 6
    _run(["seg-train", *SEG_TRAIN_ARGS, "--data", str(make_ade20k(workdir / "shapes")), "--amp", "--device",
          str(device), "--iterations", str(iterations), "--eval-interval", str(iterations), "--checkpoint-interval",
          str(iterations), "--output", str(run)])
    row = _finite_metrics(run, ("train_loss", "miou"))
    return f"{iterations} iterations: train loss {row['train_loss']:.3f}, mIoU {row['miou']:.1f}"


# classification and segmentation; a detection task adds its AMP step here
AMP_TASKS: dict[str, Callable[[torch.device, Path], str]] = {
    "amp-classification": check_amp_classification,
    "amp-segmentation": check_amp_segmentation,
}


def check_compile(device: torch.device, workdir: Path) -> str:
    """``torch.compile`` of a small model of each family: eval against eager, then an AMP training step."""
    results = []
    for name, kwargs in ((SWIN, TINY_SWIN), (CSWIN, TINY_CSWIN)):
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=10, img_size=64, drop_path_rate=0.0, **kwargs).to(device)
        images = torch.randn(4, 3, 64, 64, device=device)
        compiled = torch.compile(model, backend=COMPILE_BACKEND[device.type])
        with torch.no_grad():
            eager = model.eval()(images)
            started = time.perf_counter()
            difference = _max_difference(compiled(images), eager)
        compile_s = time.perf_counter() - started
        family = "Swin" if name == SWIN else "CSWin"
        results.append(_expect(f"{family} compiled-eager", difference, COMPILE_TOLERANCE) + f" ({compile_s:.0f} s)")
        model.train()
        with torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16):
            loss = F.cross_entropy(compiled(images).float(), torch.arange(4, device=device))
        loss.backward()
        if not all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None):
            raise CheckFailed(f"{family}: compiled AMP training step gave non-finite gradients")
    return "; ".join(results) + "; AMP training steps finite"


CHECKS: dict[str, Callable[[torch.device, Path], str]] = {"float64": check_float64, **AMP_TASKS,
                                                            "compile": check_compile}


def run_timing(device: torch.device, workdir: Path) -> None:
    """``boat-vit bench`` of the tiny BOAT models against timm's Swin-T; prints its tables."""
    for description, options in BENCH_RUNS[device.type]:
        output = workdir / "bench.json"
        started = time.perf_counter()
        _run(["bench", TIMM_SWIN, SWIN, CSWIN, "--device", str(device), "--img-size", "224", "--json",
              str(output), *options])
        rows = json.loads(output.read_text())["results"]
        print(f"\nboat-vit bench, {description} ({time.perf_counter() - started:.0f} s):")
        for row in rows:
            memory = f"{row['peak_memory_mib']:.0f} MiB" if row["peak_memory_mib"] is not None else "memory not measured"
            print(f"  {row['model']:<36} {row['throughput']:8.1f} img/s  {row['throughput_ratio']:.2f}x  {memory}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a smoke run")
    parser.add_argument("--only", nargs="+", choices=[*CHECKS, "timing"], help="run only these checks")
    args = parser.parse_args()
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu for the smoke run)")
    chosen = args.only or [*CHECKS, "timing"]
    if device.type == "cpu":
        torch.set_num_threads(1)  # a smoke run: one thread stays fast on a shared machine
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"boat-vit GPU check on {device} ({name}); torch {torch.__version__}, timm {timm.__version__}")

    failed = []
    with tempfile.TemporaryDirectory(prefix="gpu_check.") as folder:
        for check, function in CHECKS.items():
            if check not in chosen:
                continue
            started = time.perf_counter()
            try:
                verdict, detail = "ok", function(device, Path(folder))
            except CheckFailed as failure:
                verdict, detail = "FAILED", str(failure)
            except Exception as error:  # a crash is a failed check too; the report keeps going
                verdict, detail = "FAILED", f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"
                traceback.print_exc(file=sys.stderr)
            if verdict != "ok":
                failed.append(check)
            print(f"{check:<20} {verdict:<6} {time.perf_counter() - started:6.1f} s  {detail}", flush=True)
        if "timing" in chosen:
            try:
                run_timing(device, Path(folder))
            except Exception as error:
                failed.append("timing")
                print(f"timing FAILED: {type(error).__name__}: {str(error).strip().splitlines()[0]}")
    print(f"\n{len(failed)} of {len(chosen)} failed: {', '.join(failed)}" if failed else f"\nall {len(chosen)} passed")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
