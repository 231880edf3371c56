"""The digits demo on a machine that another process keeps busy: the default threads must hold up.

Runs ``boat-vit train --preset digits`` (shortened to ``--epochs``) on a quiet machine and while another
process spins on one core, with the default threads (one per core this process may use, less its data
workers; the preset has none; a waiting OpenMP thread spins briefly, then sleeps:
:mod:`boat_vit.engine.threads`), with the same threads sleeping at once (the previous default,
``OMP_WAIT_POLICY=PASSIVE``), and spinning as long as GNU OpenMP does by default (``GOMP_SPINCOUNT=300000``,
a few milliseconds). Training speed is the median images/s over the epochs of ``metrics.csv``. Target: with
the default, the busy-machine speed stays within 2x of the quiet speed.

Usage: ``python benchmarks/bench_contention.py [--epochs 3]``; run it on an otherwise quiet machine.
"""
import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from boat_vit.bench import environment, machine_line, markdown_table
from boat_vit.engine.threads import WAIT_SETTINGS

TARGET = 0.5  # busy / quiet images/s with the default threads
BUSY_LOOP = "while True: pass"
# (name, extra options, environment); the default first
SETTINGS = (
    ("default", [], {}),
    ("same threads, sleeping at once", [], {"OMP_WAIT_POLICY": "PASSIVE"}),
    ("same threads, OpenMP's default spin", [], {"GOMP_SPINCOUNT": "300000"}),
)
COLUMNS = (
    ("setting", "threads", "{}"),
    ("quiet", "quiet img/s", "{:.1f}"),
    ("busy", "one core busy img/s", "{:.1f}"),
    ("ratio", "busy / quiet", "{:.2f}"),
)


def images_per_second(epochs: int, options: list[str], extra_env: dict[str, str], output: Path) -> float:
    """Median images/s over the epochs of one demo run."""
    command = [sys.executable, "-m", "boat_vit", "train", "--preset", "digits", "--epochs", str(epochs),
               "--output", str(output), "--no-progress", *options]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", *WAIT_SETTINGS)}
    subprocess.run(command, check=True, env={**env, **extra_env}, stdout=subprocess.DEVNULL)
    with open(output / "metrics.csv", newline="") as f:
        return statistics.median(float(row["images_per_s"]) for row in csv.DictReader(f))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per demo run (default 3)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for index, (setting, options, extra_env) in enumerate(SETTINGS):
            quiet = images_per_second(args.epochs, options, extra_env, Path(folder) / f"quiet-{index}")
            busy_process = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
            try:
                busy = images_per_second(args.epochs, options, extra_env, Path(folder) / f"busy-{index}")
            finally:
                busy_process.kill()
                busy_process.wait()
            rows.append(dict(setting=setting, quiet=quiet, busy=busy, ratio=busy / quiet))
    print(f"digits demo, {args.epochs} epochs per run; {machine_line(environment())}")
    print(markdown_table(rows, COLUMNS))
    verdict = "met" if rows[0]["ratio"] >= TARGET else "MISSED"
    print(f"default threads: busy / quiet {rows[0]['ratio']:.2f} (target >= {TARGET}: {verdict})")


if __name__ == "__main__":
    main()
