"""Where and when figures were measured, and the figures as markdown, CSV and JSON."""
import argparse
import csv
import datetime
import io
import os
import platform
from pathlib import Path
from typing import Any, Optional, Sequence

import timm
import torch

from .. import files
from ..files import PathLike

__all__ = ["Column", "environment", "machine_line", "markdown_table", "report_path", "write_csv", "write_json"]

# (row key, heading, format) of a table column; a format may be a callable
Column = tuple[str, str, Any]


def environment(device: str = "cpu") -> dict[str, Any]:
    """Device name, threads, library versions and the date."""
    where = torch.device(device)
    if where.type == "cuda":
        device_name = torch.cuda.get_device_name(where)
    else:
        device_name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as cpuinfo:
                device_name = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return dict(device=str(where), device_name=device_name, threads=torch.get_num_threads(),
                cpu_count=os.cpu_count(), torch=torch.__version__, timm=timm.__version__,
                python=platform.python_version(), date=datetime.date.today().isoformat())


def machine_line(info: dict[str, Any]) -> str:
    """``device name (device, N threads)`` from :func:`environment`."""
    threads = f"{info['threads']} thread" + ("s" if info["threads"] > 1 else "")
    return f"{info['device_name']} ({info['device']}, {threads})"


def _cell(value: Any, fmt: Any) -> str:
    if value is None:
        return "n/a"
    if callable(fmt):
        return fmt(value)
    return fmt.format(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Optional[Sequence[Column]] = None) -> str:
    """The rows as a markdown table; without ``columns``, every key of the first row (numbers to 3 digits)."""
    if columns is None:
        columns = [(key, key, "{:.3g}" if isinstance(value, float) else "{}") for key, value in rows[0].items()]
    lines = ["| " + " | ".join(heading for _, heading, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key), fmt) for key, _, fmt in columns) + " |")
    return "\n".join(lines)


def write_csv(rows: Sequence[dict[str, Any]], path: PathLike) -> Path:
    """One line per row, every key of the first row a column; written atomically."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return files.write_text(path, text.getvalue())


def write_json(document: dict[str, Any], path: PathLike) -> Path:
    """``document`` as indented JSON; written atomically."""
    return files.write_json(path, document)


def report_path(text: str) -> Path:
    """A report file named on a benchmark's command line (``argparse`` ``type=``), checked before the work: its
    folder exists and takes files. A benchmark's report replaces an earlier one (a link in its place is replaced,
    never followed)."""
    try:
        return files.check_output(text, overwrite=True)
    except OSError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
