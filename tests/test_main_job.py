"""The main job's promise on the default scenario (slow: the full default config, a few minutes).

Run with ``python -m pytest -m slow``. The default test run keeps the tiny end-to-end run in
``test_train_cli.py`` and the CartPole learning test in ``test_klppo.py``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from sb3_klppo.cli import main
from sb3_klppo.config import load_config
from sb3_klppo.report import MODEL_NAME

pytestmark = pytest.mark.slow

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ppo_warmstart.json"


def test_default_config_matches_its_teacher_and_beats_round_robin_and_lor(tmp_path):
    assert main(["train", "--config", str(DEFAULT_CONFIG), "--output-dir", str(tmp_path / "run"), "--no-progress-bar"]) == 0
    out = tmp_path / "run_1"  # runs are numbered
    rows = json.loads((out / "evaluation.json").read_text())["rows"]
    trained = rows[MODEL_NAME]["e2e_mean"]
    teacher = load_config(DEFAULT_CONFIG).warm_start.expert
    assert trained <= 1.01 * rows[teacher]["e2e_mean"]
    assert trained < rows["round_robin"]["e2e_mean"]
    assert trained < rows["lor"]["e2e_mean"]
