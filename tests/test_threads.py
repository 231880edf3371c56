"""Thread defaults for shared machines: waiting OpenMP threads spin briefly, then sleep, and the digits demo computes
on every core without data workers (``boat_vit.engine.threads``)."""
import os
import subprocess
import sys

import pytest

from boat_vit.classification.recipes import resolve_config
from boat_vit.engine.threads import SPIN_COUNT, WAIT_SETTINGS, default_threads, usable_cores

PRINT_SETTINGS = "import os; {}; print(*(os.environ.get(name) for name in %r))" % (WAIT_SETTINGS,)


def _wait_settings(prelude: str, **given: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in WAIT_SETTINGS}
    result = subprocess.run([sys.executable, "-c", PRINT_SETTINGS.format(prelude)], env={**env, **given},
                            capture_output=True, text=True, check=True)
    return result.stdout.strip()


@pytest.mark.parametrize(
    "prelude, given, expected",
    [
        ("import boat_vit", {}, f"PASSIVE {SPIN_COUNT}"),
        ("import boat_vit", dict(OMP_WAIT_POLICY="ACTIVE"), "ACTIVE None"),  # the environment chose
        ("import boat_vit", dict(GOMP_SPINCOUNT="100000"), "None 100000"),
        ("import torch, boat_vit", {}, "None None"),  # too late: OpenMP read them as torch loaded
    ],
)
def test_import_makes_waiting_threads_spin_briefly_then_sleep_unless_told_or_too_late(prelude, given, expected):
    assert _wait_settings(prelude, **given) == expected


def test_digits_demo_uses_every_core_without_workers():
    config = resolve_config(dict(preset="digits"))
    assert config.workers == 0 and config.threads is None
    assert default_threads(config.workers) == usable_cores()
    assert resolve_config(dict(preset="digits", workers=2)).workers == 2  # the command line still decides
