"""Shared test fixtures: the released-code reference vectors in ../shared/fixtures/reference/."""
from pathlib import Path

import pytest
import torch

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "reference"


@pytest.fixture(scope="session")
def reference():
    """Loads a reference file by stem (e.g. ``"boat_swin_mini"``); skips where the folder is absent."""

    def load(stem: str) -> dict:
        path = REFERENCE_DIR / f"{stem}.pt"
        if not path.exists():
            pytest.skip(reason=f"reference vectors not found at {path} (they live in the project's shared/ folder)")
        return torch.load(path, weights_only=True)

    return load
