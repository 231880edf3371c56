"""Shared test fixtures: the released-code reference vectors, regenerated from ``tests/data/reference/``."""
from typing import Any, Callable, Dict

import pytest

from reference_vectors import load_reference


@pytest.fixture(scope="session")
def reference() -> Callable[[str], Dict[str, Any]]:
    """Loads a reference by file stem (e.g. ``"boat_swin_mini"``): config, released-layout weights, input, outputs."""
    return load_reference
