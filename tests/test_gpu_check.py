"""``benchmarks/gpu_check.py``, the script a CUDA machine runs: its CPU smoke mode, its verdicts and exit status."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture
def gpu_check(monkeypatch):
    """The script as a module, run in this process with one thread (it sets that itself on CPU)."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    yield module
    torch.set_num_threads(threads)


def _main(module, monkeypatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", *args])
    return module.main()


def test_float64_check_passes_on_cpu(gpu_check, monkeypatch, capsys):
    assert _main(gpu_check, monkeypatch, "--device", "cpu", "--only", "float64") == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("float64"))
    assert line.split()[1] == "ok"
    for compared in ("FSLA-released", "Swin logits-released", "CSWin stage 3-released", "CSWin logits device-CPU"):
        assert compared in line
    assert out.rstrip().endswith("all 1 passed")


def test_a_wrong_result_fails_the_check_and_the_exit_status(gpu_check, monkeypatch, capsys):
    """A reference output moved by 1e-6 (far above the float64 tolerance) fails the run with a named reason."""
    real_load = gpu_check.load_reference

    def perturbed(stem):
        data = real_load(stem)
        return dict(data, output=data["output"] + 1e-6) if stem == gpu_check.FSLA_REFERENCE else data

    monkeypatch.setattr(gpu_check, "load_reference", perturbed)
    assert _main(gpu_check, monkeypatch, "--device", "cpu", "--only", "float64") == 1
    out = capsys.readouterr().out
    assert "float64              FAILED" in out
    assert "FSLA-released differs by 1e-06 > 1e-09" in out
    assert out.rstrip().endswith("1 of 1 failed: float64")


def test_a_crashing_check_is_a_failed_check(gpu_check, monkeypatch, capsys):
    def crash(device, workdir):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore lines")

    monkeypatch.setitem(gpu_check.CHECKS, "compile", crash)
    assert _main(gpu_check, monkeypatch, "--device", "cpu", "--only", "compile") == 1
    out = capsys.readouterr().out
    assert "compile              FAILED" in out and "RuntimeError: CUDA error: an illegal memory access" in out
    assert "more lines" not in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith(
        "--device cuda: no CUDA device here (use --device cpu for the smoke run)")


@pytest.mark.slow
def test_cpu_smoke_run():
    """Every check and the timing, as the CUDA machine runs them, on the CPU (a few minutes)."""
    result = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for check in ("float64", "amp-classification", "amp-segmentation", "compile"):
        assert any(line.startswith(check) and line.split()[1] == "ok" for line in result.stdout.splitlines()), check
    assert "boat_cswin_tiny_224" in result.stdout
    assert result.stdout.rstrip().endswith("all 5 passed")
