"""A run directory: atomic checkpoints, per-epoch metrics, the summary and the training-curve plot."""
import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

__all__ = ["RunDirectory", "atomic_save", "load_checkpoint"]

LAST_CHECKPOINT = "last.pth"
BEST_CHECKPOINT = "best.pth"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "curves.png"
METRIC_FIELDS = ("epoch", "train_loss", "lr", "val_loss", "top1", "top5", "ema_top1", "ema_top5",
                 "images_per_s", "skipped_images")


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: a reader never sees half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict:
    """Loads a training checkpoint written by :class:`RunDirectory` (plain data only, no pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


class RunDirectory:
    """Files of one training run. Only the process that owns the run (rank 0) should write."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def last(self) -> Path:
        return self.root / LAST_CHECKPOINT

    @property
    def best(self) -> Path:
        return self.root / BEST_CHECKPOINT

    def save_checkpoint(self, state: dict, is_best: bool) -> None:
        atomic_save(state, self.last)
        if is_best:
            atomic_save(state, self.best)

    def read_metrics(self) -> list[dict]:
        path = self.root / METRICS_FILE
        if not path.exists():
            return []
        with open(path, newline="") as f:
            return [{k: float(v) if v not in ("", None) else None for k, v in row.items()} for row in csv.DictReader(f)]

    def write_metrics(self, rows: list[dict]) -> None:
        """Rewrites ``metrics.csv`` (atomically) with one row per finished epoch."""
        tmp = self.root / f".{METRICS_FILE}.tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_FIELDS})
        os.replace(tmp, self.root / METRICS_FILE)

    def write_summary(self, summary: dict) -> Path:
        tmp = self.root / f".{SUMMARY_FILE}.tmp"
        tmp.write_text(json.dumps(summary, indent=2, default=str))
        os.replace(tmp, self.root / SUMMARY_FILE)
        return self.root / SUMMARY_FILE

    def plot(self, rows: list[dict], title: Optional[str] = None) -> Path:
        """Writes the loss, accuracy and learning-rate curves to ``curves.png``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [row["epoch"] + 1 for row in rows]
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        axes[0].plot(epochs, [row["train_loss"] for row in rows], label="train")
        axes[0].plot(epochs, [row["val_loss"] for row in rows], label="validation")
        axes[0].set_title("loss")
        axes[1].plot(epochs, [row["top1"] for row in rows], label="top-1")
        axes[1].plot(epochs, [row["top5"] for row in rows], label="top-5")
        if any(row.get("ema_top1") is not None for row in rows):
            axes[1].plot(epochs, [row["ema_top1"] for row in rows], label="EMA top-1")
        axes[1].set_title("validation accuracy (%)")
        axes[2].plot(epochs, [row["lr"] for row in rows])
        axes[2].set_title("learning rate (end of epoch)")
        for ax in axes:
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        axes[0].legend()
        axes[1].legend()
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        path = self.root / PLOT_FILE
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
