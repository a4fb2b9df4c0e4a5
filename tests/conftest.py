"""Shared fixtures: locating the optional calibration data in ../shared/data; one torch thread."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """Where Vidur's profiling files and traces live (never inside the project)."""
    override = os.environ.get("VIDUR_SHARED_DATA")
    base = Path(override) if override else REPO_ROOT.parent / "shared" / "data"
    return base / "vidur"


@pytest.fixture
def shared_data() -> Path:
    """The ../shared/data/vidur directory, or a clean skip when it is absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"calibration data not found at {path} (set VIDUR_SHARED_DATA to use it)")
    return path


@pytest.fixture(autouse=True)
def single_torch_thread():
    """One torch thread: faster for the small networks of the tests, and bitwise reproducible.

    Applies only once torch is loaded (the RL test modules import it when collected); it never
    imports torch itself, so the simulator's tests run where torch is absent.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)
