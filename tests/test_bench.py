"""``boat-vit bench``: every model in table, CSV and JSON with positive numbers, exact parameter counts, ratios."""
import contextlib
import csv
import io
import json
import platform
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from boat_vit.bench import BenchConfig, benchmark_models, count_macs, model_table
from boat_vit.cli import main

TINY_KWARGS = dict(embed_dim=16, depths=(2, 2), num_heads=(1, 2), img_size=64)
MODELS = ("boat_swin_tiny_patch4_window7_224", "swin_tiny_patch4_window7_224")
POSITIVE_KEYS = ("params", "gmacs", "throughput", "latency_ms", "peak_memory_mib")
BATCH = 2


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One CLI run over both tiny models: (stdout, CSV rows, JSON document)."""
    folder = tmp_path_factory.mktemp("bench")
    csv_path, json_path = folder / "bench.csv", folder / "bench.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = main(["bench", *MODELS, "--model-kwargs", json.dumps(TINY_KWARGS), "--batch-size", str(BATCH),
                       "--warmup", "1", "--repeats", "2", "--device", "cpu", "--csv", str(csv_path),
                       "--json", str(json_path), "--allocator", "glibc"])
    assert status == 0
    with open(csv_path, newline="") as f:
        csv_rows = list(csv.DictReader(f))
    return stdout.getvalue(), csv_rows, json.loads(json_path.read_text())


def test_table_lists_every_model(bench_run):
    table, _, _ = bench_run
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + len(MODELS)  # heading and one line per model
    for name, line in zip(MODELS, lines[1:]):
        assert line.startswith(f"| {name} | 64x64 |")
    assert lines[1].endswith("| 1.00x | 1.00x | 1.00x |")


def test_csv_and_json_rows(bench_run):
    _, csv_rows, document = bench_run
    rows = document["results"]
    assert [r["model"] for r in rows] == [r["model"] for r in csv_rows] == list(MODELS)
    assert document["environment"]["device"] == "cpu" and document["config"]["batch_size"] == BATCH
    for row, csv_row in zip(rows, csv_rows):
        for key in POSITIVE_KEYS:
            assert row[key] > 0, key
            assert float(csv_row[key]) == pytest.approx(row[key]), key
        assert row["throughput"] == pytest.approx(BATCH / row["latency_ms"] * 1e3)
    for key in ("throughput_ratio", "gmacs_ratio", "params_ratio", "memory_ratio"):
        assert rows[0][key] == 1.0


def test_parameter_counts_are_exact(bench_run):
    _, _, document = bench_run
    for row in document["results"]:
        model = timm.create_model(row["model"], **TINY_KWARGS)
        assert row["params"] == sum(p.numel() for p in model.parameters())


def test_boat_counts_more_macs_than_its_host(bench_run):
    """The FSLA branches add work: its attention (fused on CPU) is counted."""
    _, _, document = bench_run
    boat, swin = document["results"]
    assert boat["gmacs"] > swin["gmacs"]


class _Attention(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(x, x, x)


def test_count_macs_includes_cpu_fused_attention():
    batch, heads, tokens, dim = 2, 3, 10, 8
    macs = count_macs(_Attention(), torch.randn(batch, heads, tokens, dim))
    assert macs == 2 * batch * heads * tokens * tokens * dim  # q k^T and weights v


def test_training_step_without_memory():
    rows = benchmark_models(MODELS[:1], BenchConfig(batch_size=BATCH, train=True, warmup=1, repeats=1,
                                                    model_kwargs=TINY_KWARGS, measure_memory=False))
    (row,) = rows
    assert row["throughput"] > 0 and row["peak_memory_mib"] is None and row["memory_ratio"] is None
    assert "| n/a |" in model_table(rows)


def test_unknown_model_names_a_close_match(capsys):
    assert main(["bench", "boat_swin_tiny_patch4_window7", "--repeats", "1"]) == 2
    error = capsys.readouterr().err
    assert "unknown model 'boat_swin_tiny_patch4_window7'" in error
    assert "boat_swin_tiny_patch4_window7_224" in error


@pytest.mark.parametrize("change", [dict(repeats=0), dict(batch_size=0), dict(dtype="float8"),
                                    dict(compile=True, warmup=0), dict(device="tpu:x"), dict(device="mps")])
def test_bad_settings_are_value_errors(change):
    with pytest.raises(ValueError):
        benchmark_models(MODELS[:1], BenchConfig(**change))


FRESH_BUFFER_FAULTS = """
import resource, sys, torch
from boat_vit.bench import retain_freed_memory
WARM_UP = 4  # the heap settles after a few buffers
if sys.argv[1] == "retain":
    assert retain_freed_memory(), "mallopt refused the settings"
def faults_of_a_fresh_buffer():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(64 << 20, dtype=torch.uint8)  # above glibc's largest adaptive mmap threshold (32 MiB)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
for _ in range(WARM_UP):
    faults_of_a_fresh_buffer()
print(faults_of_a_fresh_buffer())
"""


def _faults_of_a_recycled_buffer(allocator: str) -> str:
    result = subprocess.run([sys.executable, "-c", FRESH_BUFFER_FAULTS, allocator], capture_output=True, text=True,
                            check=True)
    return result.stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="retain_freed_memory needs glibc's mallopt")
def test_retain_freed_memory_reuses_buffers_without_page_faults():
    retained = _faults_of_a_recycled_buffer("retain")
    pages = (64 << 20) // 4096
    assert int(_faults_of_a_recycled_buffer("glibc")) >= pages // 2  # default: unmapped on free, faulted again
    assert int(retained) < pages // 16


def test_a_benchmark_report_is_checked_first_and_replaces_a_planted_link(tmp_path):
    """``report_path`` (a benchmark's ``--json``/``--output``) refuses a missing folder before the work; the
    report written there replaces a link in its place, never what the link points to."""
    import argparse

    from boat_vit.bench import report_path, write_json

    with pytest.raises(argparse.ArgumentTypeError, match=f"the folder {tmp_path / 'missing'} does not exist"):
        report_path(str(tmp_path / "missing" / "rows.json"))
    precious = tmp_path / "precious"
    precious.write_bytes(b"the user's own file")
    (tmp_path / "rows.json").symlink_to(precious)
    write_json(dict(rows=[1, 2]), report_path(str(tmp_path / "rows.json")))
    assert precious.read_bytes() == b"the user's own file"
    assert not (tmp_path / "rows.json").is_symlink() and json.loads((tmp_path / "rows.json").read_text()) == dict(rows=[1, 2])
