"""Shared fixtures: locating the optional calibration data in ../shared/data; one torch thread;
SB3's default log directory inside pytest's temporary tree."""
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


@pytest.fixture(autouse=True, scope="session")
def sb3_log_dir(tmp_path_factory):
    """SB3 makes a log directory for every ``learn()`` without a configured logger, under the
    system's temporary directory unless ``SB3_LOGDIR`` says where; the tests' go to pytest's
    temporary tree, which pytest prunes, instead of piling up in /tmp."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SB3_LOGDIR", str(tmp_path_factory.mktemp("sb3_logs")))
        yield
