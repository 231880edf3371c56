"""A run directory: atomic checkpoints, the metrics table, the summary and the training-curve plot.

Nothing a user made is lost: a run directory that already holds a run is only written by a run that resumes it
(``resume``) or replaces it (``overwrite``: the previous files are replaced as the new run writes its own), every file is written atomically through an exclusively created temporary file (never through a
planted link), temporary files that an interrupted save left behind are removed when a run starts, and the
directory is checked writable before the first training step.
"""
import csv
import errno
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..errors import Argument, RunDirectoryError
from ..files import TEMPORARY_SUFFIX, atomic_write

__all__ = ["LAST_CHECKPOINT", "BEST_CHECKPOINT", "METRICS_FILE", "SUMMARY_FILE", "PLOT_FILE", "Panels", "RunDirectory"]

LAST_CHECKPOINT = "last.pth"
BEST_CHECKPOINT = "best.pth"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "curves.png"
RUN_FILES = (LAST_CHECKPOINT, BEST_CHECKPOINT, METRICS_FILE, SUMMARY_FILE, PLOT_FILE)
PLOT_DPI = 100
PANEL_SIZE = (4.3, 3.6)  # inches per plot panel
# Plot panels: (title, ((metric, legend label or None), ...)); a series without any value is left out.
Panels = Sequence[tuple[str, Sequence[tuple[str, Optional[str]]]]]


def _describe_os_error(error: OSError, where: Path) -> str:
    if error.errno == errno.ENOSPC:
        return f"no space left on {where}"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write to {where}: {error.strerror or error}"
    return f"cannot write to {where}: {error}"


class RunDirectory:
    """Files of one training run. Only the process that owns the run (rank 0) should write.

    Args:
        root: The folder (created if missing).
        resume: The run continues here from a checkpoint.
        overwrite: A run already in ``root`` may be replaced.

    Raises:
        RunDirectoryError: ``root`` is a file or not writable, or holds a run and neither ``resume`` nor
            ``overwrite`` is given.
    """

    def __init__(self, root: Path, resume: bool = False, overwrite: bool = False):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise RunDirectoryError(Argument("output", self.root), " is a file, not a folder")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunDirectoryError(_describe_os_error(error, self.root)) from None
        existing = [name for name in (LAST_CHECKPOINT, BEST_CHECKPOINT, METRICS_FILE, SUMMARY_FILE)
                    if (self.root / name).exists()]
        if existing and not (resume or overwrite):
            raise RunDirectoryError(
                f"{self.root} already holds a run ({', '.join(existing)}); pass ", Argument("resume", self.root),
                " to continue it, ", Argument("overwrite", True), " to replace it, or choose another ",
                Argument("output"))
        self._check_writable()
        self.removed_temporaries = self._remove_temporaries()

    def _check_writable(self) -> None:
        try:
            fd, probe = tempfile.mkstemp(dir=self.root, prefix=".write-check.", suffix=TEMPORARY_SUFFIX)
            os.close(fd)
            os.unlink(probe)
        except OSError as error:
            raise RunDirectoryError(_describe_os_error(error, self.root)) from None

    def _remove_temporaries(self) -> list[str]:
        """Removes the temporary files that interrupted saves of this directory's files left behind."""
        removed = []
        for name in RUN_FILES:
            for orphan in self.root.glob(f".{name}.*{TEMPORARY_SUFFIX}"):
                if orphan.is_file() and not orphan.is_symlink():
                    orphan.unlink()
                    removed.append(orphan.name)
        return removed

    @staticmethod
    def holds_checkpoint(root: Path) -> bool:
        """Whether ``root`` holds a run's last checkpoint."""
        return (Path(root) / LAST_CHECKPOINT).is_file()

    @property
    def last(self) -> Path:
        return self.root / LAST_CHECKPOINT

    @property
    def best(self) -> Path:
        return self.root / BEST_CHECKPOINT

    def _write(self, path: Path, write, mode: str = "wb") -> Path:
        """:func:`~boat_vit.files.atomic_write` with a one-line error naming the run directory."""
        try:
            return atomic_write(path, write, mode)
        except OSError as error:
            raise RunDirectoryError(_describe_os_error(error, self.root)) from None

    def save_checkpoint(self, state: dict, is_best: bool) -> None:
        """Writes ``last.pth`` and, for a new best, ``best.pth`` (each atomically)."""
        self._write(self.last, lambda file: torch.save(state, file))
        if is_best:
            self._write(self.best, lambda file: torch.save(state, file))

    def write_metrics(self, rows: list[dict], fields: Sequence[str]) -> None:
        """Rewrites ``metrics.csv`` (atomically) with the ``fields`` of each row (one per evaluation)."""
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in fields})
        self._write(self.root / METRICS_FILE, lambda f: f.write(text.getvalue()), mode="w")

    def write_summary(self, summary: dict) -> Path:
        """Rewrites ``summary.json`` (atomically)."""
        text = json.dumps(summary, indent=2, default=str)
        return self._write(self.root / SUMMARY_FILE, lambda f: f.write(text), mode="w")

    def plot(self, rows: list[dict], panels: Panels, title: Optional[str] = None, x: str = "epoch",
             x_offset: int = 1) -> Path:
        """Writes one panel of curves per entry of ``panels`` to ``curves.png``, against ``row[x] + x_offset``."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        steps = [row[x] + x_offset for row in rows]
        figure = Figure(figsize=(PANEL_SIZE[0] * len(panels) + 0.1, PANEL_SIZE[1]), layout="tight")
        FigureCanvasAgg(figure)
        for ax, (panel_title, series) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
            for key, label in series:
                if any(row.get(key) is not None for row in rows):
                    ax.plot(steps, [row.get(key) for row in rows], label=label)
            ax.set_title(panel_title)
            ax.set_xlabel(x)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        if title:
            figure.suptitle(title)
        return self._write(self.root / PLOT_FILE, lambda f: figure.savefig(f, dpi=PLOT_DPI, format="png"))

