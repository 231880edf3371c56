"""A run directory: atomic checkpoints, per-epoch metrics, the summary and the training-curve plot."""
import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

__all__ = ["CLASSIFICATION_PANELS", "RunDirectory", "atomic_save", "load_checkpoint", "load_resume_checkpoint"]

LAST_CHECKPOINT = "last.pth"
BEST_CHECKPOINT = "best.pth"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "curves.png"
METRIC_FIELDS = ("epoch", "train_loss", "lr", "val_loss", "top1", "top5", "ema_top1", "ema_top5",
                 "images_per_s", "skipped_images")
# Plot panels: (title, ((metric, legend label or None), ...)); a series without any value is left out.
Panels = Sequence[tuple[str, Sequence[tuple[str, Optional[str]]]]]
CLASSIFICATION_PANELS: Panels = (
    ("loss", (("train_loss", "train"), ("val_loss", "validation"))),
    ("validation accuracy (%)", (("top1", "top-1"), ("top5", "top-5"), ("ema_top1", "EMA top-1"))),
    ("learning rate (end of epoch)", (("lr", None),)),
)


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


def load_resume_checkpoint(path: Path) -> dict:
    """The checkpoint to resume from: ``path`` itself, or the ``last.pth`` of a run directory."""
    path = Path(path)
    return load_checkpoint(path / LAST_CHECKPOINT if path.is_dir() else path)


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

    def write_metrics(self, rows: list[dict], fields: Sequence[str] = METRIC_FIELDS) -> None:
        """Rewrites ``metrics.csv`` (atomically) with the ``fields`` of each row (one per evaluation)."""
        tmp = self.root / f".{METRICS_FILE}.tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in fields})
        os.replace(tmp, self.root / METRICS_FILE)

    def write_summary(self, summary: dict) -> Path:
        tmp = self.root / f".{SUMMARY_FILE}.tmp"
        tmp.write_text(json.dumps(summary, indent=2, default=str))
        os.replace(tmp, self.root / SUMMARY_FILE)
        return self.root / SUMMARY_FILE

    def plot(self, rows: list[dict], title: Optional[str] = None, panels: Panels = CLASSIFICATION_PANELS,
             x: str = "epoch", x_offset: int = 1) -> Path:
        """Writes one panel of curves per entry of ``panels`` to ``curves.png``, against ``row[x] + x_offset``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [row[x] + x_offset for row in rows]
        fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels) + 0.1, 3.6), squeeze=False)
        for ax, (panel_title, series) in zip(axes[0], panels):
            for key, label in series:
                if any(row.get(key) is not None for row in rows):
                    ax.plot(steps, [row.get(key) for row in rows], label=label)
            ax.set_title(panel_title)
            ax.set_xlabel(x)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        path = self.root / PLOT_FILE
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
