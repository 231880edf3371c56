"""A run directory: atomic checkpoints, the metrics table, the summary and the training-curve plot."""
import csv
import io
import json
from pathlib import Path
from typing import Optional, Sequence

from ..checkpoint import atomic_write, load_checkpoint_file, save_atomic

__all__ = ["Panels", "RunDirectory", "load_resume_checkpoint"]

LAST_CHECKPOINT = "last.pth"
BEST_CHECKPOINT = "best.pth"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "curves.png"
# Plot panels: (title, ((metric, legend label or None), ...)); a series without any value is left out.
Panels = Sequence[tuple[str, Sequence[tuple[str, Optional[str]]]]]


def load_resume_checkpoint(path: Path) -> dict:
    """The checkpoint to resume from: ``path`` itself, or the ``last.pth`` of a run directory (read safely)."""
    path = Path(path)
    return load_checkpoint_file(path / LAST_CHECKPOINT if path.is_dir() else path)


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
        save_atomic(state, self.last)
        if is_best:
            save_atomic(state, self.best)

    def write_metrics(self, rows: list[dict], fields: Sequence[str]) -> None:
        """Rewrites ``metrics.csv`` (atomically) with the ``fields`` of each row (one per evaluation)."""
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in fields})
        atomic_write(self.root / METRICS_FILE, lambda f: f.write(text.getvalue()), mode="w")

    def write_summary(self, summary: dict) -> Path:
        """Rewrites ``summary.json`` (atomically)."""
        text = json.dumps(summary, indent=2, default=str)
        return atomic_write(self.root / SUMMARY_FILE, lambda f: f.write(text), mode="w")

    def plot(self, rows: list[dict], panels: Panels, title: Optional[str] = None, x: str = "epoch",
             x_offset: int = 1) -> Path:
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
