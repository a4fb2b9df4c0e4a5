"""The training pipeline as one Python call, for your own tools (Optuna, RL Zoo, notebooks, sweeps).

    from sb3_klppo.pipeline import model_metrics, run_training

    run_dir, summary = run_training("configs/ppo_warmstart.json",
                                    overrides={"kl_regularization.kl_coef": 0.05, "seed": 1,
                                               "output_dir": "runs/kl005_seed1"})
    print(run_dir, model_metrics(summary)["e2e_mean"])

It runs exactly what ``python -m sb3_klppo train`` runs (:func:`sb3_klppo.cli.train`): warm start,
KLPPO, evaluation, report; the run directory holds the same artifacts. Overrides are keyed by
the JSON key of the config (``python -m sb3_klppo flags`` lists them) and are checked like the
file and the flags are: a bad key or value raises :class:`~sb3_klppo.config.ConfigError` naming it.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

from sb3_klppo.cli import train
from sb3_klppo.config import (
    ConfigError,
    Knob,
    TrainConfig,
    all_knobs,
    apply_overrides,
    check_value,
    config_from_dict,
    load_config,
    with_value,
)
from sb3_klppo.report import MODEL_NAME

SUMMARY_FILE = "summary.json"
"""The run's machine-readable summary, written by the report (:func:`sb3_klppo.report.summary_json`)."""

ConfigLike = TrainConfig | Mapping[str, Any] | str | os.PathLike
"""A config: the dataclass, a JSON-like dict (missing keys take their defaults) or a JSON file."""


def knob_by_key(key: str) -> Knob:
    """The config leaf with the dotted JSON key ``key``; the error lists every valid key."""
    knobs = {knob.key: knob for knob in all_knobs()}
    if key not in knobs:
        raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(knobs)}")
    return knobs[key]


def override(config: TrainConfig, key: str, value: Any) -> TrainConfig:
    """``config`` with the leaf ``key`` set to ``value``.

    A string is read like the key's CLI flag (``"0.05"``, ``"null"``, ``"a,b"`` for a list, JSON
    for an object, ``"true"``/``"false"`` for a switch); any other value is taken as the JSON value.
    Either way it passes the same type and range checks as the config file.
    """
    knob = knob_by_key(key)
    if isinstance(value, str) and knob.annotation is bool:
        if value.strip().lower() not in ("true", "false"):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        value = value.strip().lower() == "true"
    if isinstance(value, (str, bool)):
        return apply_overrides(config, {knob: value})
    try:
        return with_value(config, knob, check_value(knob, value))
    except ValueError as error:
        raise ConfigError(f"{key}: {error}") from None


def resolve_config(config: ConfigLike, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """The :class:`TrainConfig` of ``config`` (dataclass, dict or file) with ``overrides`` applied in order."""
    if isinstance(config, TrainConfig):
        resolved = config
    elif isinstance(config, Mapping):
        resolved = config_from_dict(dict(config))
    else:
        resolved = load_config(config)
    for key, value in (overrides or {}).items():
        resolved = override(resolved, key, value)
    return resolved


def run_training(config: ConfigLike, overrides: Mapping[str, Any] | None = None) -> tuple[pathlib.Path, dict[str, Any]]:
    """Train, evaluate and report one run; return its directory and its summary.

    :param config: a :class:`TrainConfig`, a JSON-like dict or the path of a JSON config file.
    :param overrides: ``{json_key: value}`` applied on top (see :func:`override`), e.g.
        ``{"seed": 3, "output_dir": "runs/s3"}``.
    :return: ``(run_dir, summary)``; ``summary`` is the run's ``summary.json`` (timings, cloning
        accuracy, per-update training figures and, when evaluation is enabled, ``evaluation``: one
        row of metrics per policy; :func:`model_metrics` picks the trained policy's).
    :raises ConfigError: a bad config, key or value (before any training).
    """
    summary = train(resolve_config(config, overrides))
    return summary.output_dir, json.loads((summary.output_dir / SUMMARY_FILE).read_text())


def model_metrics(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The trained policy's evaluation row of a run summary (``e2e_mean``, ``ttft_p99``, ``throughput``...;
    latencies in seconds); empty when the run was not evaluated."""
    rows = summary.get("evaluation") or {}
    return dict(rows.get(MODEL_NAME, {}))
