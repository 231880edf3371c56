"""Measuring models and layers: interleaved timing, memory, MACs, reports, and whole-model comparisons.

The ``boat-vit bench`` command and every script in ``benchmarks/`` measure through this API.
"""
from .macs import count_macs
from .memory import (
    ALLOCATOR_HELP,
    ALLOCATORS,
    peak_bytes,
    release_freed_memory,
    reset_peak_resident,
    resident_bytes,
    retain_freed_memory,
    run_isolated,
    use_allocator,
)
from .models import DTYPES, MODEL_COLUMNS, BenchConfig, benchmark_models, describe, model_table
from .report import Column, environment, machine_line, markdown_table, report_path, write_csv, write_json
from .timing import Timings, time_interleaved

__all__ = [
    "ALLOCATORS",
    "ALLOCATOR_HELP",
    "BenchConfig",
    "Column",
    "DTYPES",
    "MODEL_COLUMNS",
    "Timings",
    "benchmark_models",
    "count_macs",
    "describe",
    "environment",
    "machine_line",
    "markdown_table",
    "model_table",
    "peak_bytes",
    "release_freed_memory",
    "report_path",
    "reset_peak_resident",
    "resident_bytes",
    "retain_freed_memory",
    "run_isolated",
    "time_interleaved",
    "use_allocator",
    "write_csv",
    "write_json",
]
