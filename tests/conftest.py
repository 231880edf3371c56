"""Shared test fixtures: the released-code reference vectors (regenerated from ``tests/data/reference/``) and
small generated data sets."""
import signal
from pathlib import Path
from typing import Any, Callable, Dict

import pytest

from reference_vectors import load_reference
from tiny_data import make_ade20k, make_shapes_folder


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C tests send SIGINT to the commands they start: those need SIGINT's default action. A shell that starts
    the suite in the background ignores SIGINT, and processes started from an ignoring one inherit that."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def reference() -> Callable[[str], Dict[str, Any]]:
    """Loads a reference by file stem (e.g. ``"boat_swin_mini"``): config, released-layout weights, input, outputs."""
    return load_reference


@pytest.fixture(scope="session")
def shapes_folder(tmp_path_factory) -> Path:
    """Drawn circles and squares in the ImageNet layout (24 train, 8 val images per class)."""
    return make_shapes_folder(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="session")
def ade_shapes(tmp_path_factory) -> Path:
    """Drawn shapes with label maps in the ADEChallengeData2016 layout (24 training, 6 validation)."""
    return make_ade20k(tmp_path_factory.mktemp("ade"))
