"""Shared test configuration: paths to the project's and the shared test data."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real captures (gpsd logs, CAN logs, VRPTW instances)."""
    if not DATA.is_dir():
        pytest.fail(f"shared test data not found at {DATA}")
    return DATA
