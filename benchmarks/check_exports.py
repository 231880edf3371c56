"""Exports each of the six BOAT models to each format with ``boat-vit export`` at default settings, and tabulates
the outcome: exit status, the time of every step, and the check's agreement with eager PyTorch.

The weights are timm's initialisation (seed 0), written to a safetensors file per model and passed as
``--pretrained-file``, as a user would pass released weights. Every export runs in its own process; rows are
added to the table as they finish (``--output``, rewritten whole after each row, earlier tables kept), so a
long run can be read while it goes on.

Usage: ``python benchmarks/check_exports.py [--models ...] [--formats ...] [--output exports.md]
[--work-dir DIR]``. The B models take long on a small CPU: run it in the background.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch

import boat_vit  # noqa: F401  (registers the models)
from boat_vit.bench import report_path
from boat_vit.files import save_safetensors, write_text
from boat_vit.export import FORMATS

MODELS = (
    "boat_swin_tiny_patch4_window7_224",
    "boat_cswin_tiny_224",
    "boat_swin_small_patch4_window7_224",
    "boat_cswin_small_224",
    "boat_swin_base_patch4_window7_224",
    "boat_cswin_base_224",
)
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}
STEPS = ("eager", "trace", "convert", "save", "reload", "check")
WEIGHTS_SEED = 0
HEADER = ("| model | format | exit | " + " | ".join(f"{s} s" for s in STEPS)
          + " | total s | load | agreement (or error) |\n|" + "---|" * (len(STEPS) + 6) + "\n")


def weights_file(model_name: str, folder: Path) -> Path:
    """timm-initialised weights of ``model_name`` (seed :data:`WEIGHTS_SEED`) as a safetensors file."""
    path = folder / f"{model_name}.safetensors"
    if not path.exists():
        torch.manual_seed(WEIGHTS_SEED)
        save_safetensors(timm.create_model(model_name).state_dict(), path)
    return path


def export_row(model_name: str, fmt: str, weights: Path, folder: Path) -> str:
    """Runs one export in a fresh process; returns its table row."""
    output = folder / f"{model_name}{SUFFIXES[fmt]}"
    command = [sys.executable, "-m", "boat_vit", "export", model_name, "--pretrained-file", str(weights),
               "--format", fmt, "--output", str(output), "--overwrite"]
    load = os.getloadavg()[0]  # the machine's load when the export started (1-minute average)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    total = time.perf_counter() - start
    seconds = dict(re.findall(r"^(\w+): ([\d.]+) s", done.stdout, flags=re.MULTILINE))
    check = re.search(r"^check: [\d.]+ s; (.*)$", done.stdout, flags=re.MULTILINE)
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    outcome = check.group(1) if done.returncode == 0 and check else (errors[-1] if errors else done.stderr[-300:])
    output.unlink(missing_ok=True)
    cells = [model_name, fmt, str(done.returncode), *(seconds.get(s, "") for s in STEPS), f"{total:.0f}",
             f"{load:.1f}", outcome.replace("|", "/")]
    return "| " + " | ".join(cells) + " |\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--output", type=report_path, default="exports.md", help="the table (earlier tables kept)")
    parser.add_argument("--work-dir", type=Path, help="weights and exports (default: a temporary folder)")
    args = parser.parse_args()
    # earlier tables are kept; the file is rewritten whole after every row (a link in its place is replaced)
    table = args.output.read_text() if args.output.is_file() and not args.output.is_symlink() else ""
    table += f"\n{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, torch {torch.__version__}\n\n" + HEADER
    write_text(args.output, table)
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.work_dir or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        for model_name in args.models:
            weights = weights_file(model_name, folder)
            for fmt in args.formats:
                row = export_row(model_name, fmt, weights, folder)
                table += row
                write_text(args.output, table)
                print(row, end="", flush=True)
            weights.unlink()


if __name__ == "__main__":
    main()
