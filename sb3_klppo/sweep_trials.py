"""Trial records, the sweep's state on disk, and one trial: train and evaluate a (configuration,
seed) with the pipeline unless its record says it finished.
"""

from __future__ import annotations

import json
import pathlib
import traceback
from collections.abc import Mapping
from typing import Any

from sb3_klppo.config import ConfigError, config_to_dict
from sb3_klppo.pipeline import model_metrics, run_training
from sb3_klppo.sweep_plan import METRIC_MODES, TRIALS_DIR, Configuration, SweepPlan

OK, FAILED, NOT_RUN = "ok", "failed", "not run"
"""Trial statuses in the records and the report."""


def read_record(path: pathlib.Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def write_record(path: pathlib.Path, record: Mapping[str, Any]) -> None:
    """Write atomically, so an interrupted write never leaves a half record behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(record, indent=2, default=str) + "\n")
    partial.replace(path)


def comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config dict without its output dir (a moved sweep directory still resumes)."""
    return {key: value for key, value in json.loads(json.dumps(config)).items() if key != "output_dir"}


def check_records(plan: SweepPlan) -> None:
    """Refuse an output dir holding trials of another sweep, instead of mixing or overwriting them."""
    configurations = plan.configurations()
    for path in sorted((plan.output_dir / TRIALS_DIR).glob("*.json")):
        record = read_record(path)
        index, seed = record.get("configuration"), record.get("seed")
        matches = (isinstance(index, int) and 0 <= index < len(configurations) and seed in plan.seeds
                   and comparable(record.get("config", {}))
                   == comparable(config_to_dict(plan.trial_config(configurations[index], seed))))
        if not matches:
            raise ConfigError(f"--output-dir {plan.output_dir}: {TRIALS_DIR}/{path.name} is a trial of another sweep "
                              "(different config, grid or seeds); resume with the same options or use a new --output-dir")


def trial_record(plan: SweepPlan, configuration: Configuration, seed: int, status: str, **fields: Any) -> dict[str, Any]:
    """A trial's record: which configuration and seed, its full config, its status and what came out."""
    return {"configuration": configuration.index, "label": configuration.label, "overrides": configuration.overrides,
            "seed": seed, "config": config_to_dict(plan.trial_config(configuration, seed)), "status": status, **fields}


def finished(plan: SweepPlan, configuration: Configuration, seed: int) -> dict[str, Any] | None:
    """The trial's record if it finished."""
    record = read_record(plan.record_path(configuration, seed))
    return record if record and record.get("status") == OK else None


def run_trial(plan: SweepPlan, index: int, seed: int) -> dict[str, Any]:
    """Train and evaluate one (configuration, seed) unless its record says it is done; return its metrics.

    A failure is recorded with its error and traceback, then raised again so Ray marks the trial failed.
    """
    configuration = plan.configurations()[index]
    done = finished(plan, configuration, seed)
    if done:
        return done["metrics"]
    path = plan.record_path(configuration, seed)
    try:
        run_dir, summary = run_training(plan.trial_config(configuration, seed))
    except Exception as error:
        write_record(path, trial_record(plan, configuration, seed, FAILED, error=f"{type(error).__name__}: {error}",
                                        traceback=traceback.format_exc()))
        raise
    metrics = {key: value for key, value in model_metrics(summary).items() if key in METRIC_MODES}
    write_record(path, trial_record(plan, configuration, seed, OK, run_dir=str(run_dir), metrics=metrics))
    return metrics
