"""Thread defaults for shared machines: OpenMP threads sleep while they wait, and the digits demo computes
on every core without data workers (``boat_vit.engine.threads``)."""
import os
import subprocess
import sys

import pytest

from boat_vit.classification.recipes import resolve_config
from boat_vit.engine.threads import default_threads, usable_cores

PRINT_POLICY = "import os; {}; print(os.environ.get('OMP_WAIT_POLICY'))"


def _policy(prelude: str, env_policy=None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    result = subprocess.run([sys.executable, "-c", PRINT_POLICY.format(prelude)], env=env, capture_output=True,
                            text=True, check=True)
    return result.stdout.strip()


@pytest.mark.parametrize(
    "prelude, env_policy, expected",
    [
        ("import boat_vit", None, "PASSIVE"),
        ("import boat_vit", "ACTIVE", "ACTIVE"),  # the environment chose
        ("import torch, boat_vit", None, "None"),  # too late: OpenMP read it as torch loaded
    ],
)
def test_import_makes_waiting_threads_sleep_unless_told_or_too_late(prelude, env_policy, expected):
    assert _policy(prelude, env_policy) == expected


def test_digits_demo_uses_every_core_without_workers():
    config = resolve_config(dict(preset="digits"))
    assert config.workers == 0 and config.threads is None
    assert default_threads(config.workers) == usable_cores()
    assert resolve_config(dict(preset="digits", workers=2)).workers == 2  # the command line still decides
