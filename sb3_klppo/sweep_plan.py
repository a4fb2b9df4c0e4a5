"""The sweep's plan: the grid's keys and values, its configurations, the seeds, and where each
trial writes its run and its record. No Ray: everything here is checked before any trial starts.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from sb3_klppo.config import ConfigError, TrainConfig, get_value, holds_collection
from sb3_klppo.pipeline import knob_by_key, override, preflight, resolve_config

METRIC_MODES: dict[str, str] = {
    **{f"{kind}_{stat}": "min" for kind in ("e2e", "ttft") for stat in ("mean", "p50", "p90", "p99")},
    "throughput": "max",
    "restarts": "min",
    "return_mean": "max",
}
"""The trained policy's evaluation metrics the sweep aggregates, and whether lower or higher is better."""
SWEEP_OWNED_KEYS = ("seed", "output_dir", "number_runs", "overwrite", "evaluation.enabled")
"""Config keys the sweep sets itself (seeds, run directories: exactly the planned one, rewritten
when its trial runs again) or needs (the evaluation it ranks by)."""
TRIALS_DIR = "trials"
"""Folder of the trial records, in the sweep directory."""


@dataclasses.dataclass(frozen=True)
class GridAxis:
    """One ``--grid KEY=V1,V2`` option: the key, its checked values and how they are written."""

    key: str
    values: tuple[Any, ...]
    """JSON values after the config's checks (what the trial configs hold)."""
    texts: tuple[str, ...]
    """The values as written on the command line (labels and Optuna's categorical choices)."""


def parse_grid(spec: str, base: TrainConfig) -> GridAxis:
    """``KEY=V1,V2,...`` (or ``KEY=[JSON, ...]``, needed for list and object values), every value
    checked against the config like a flag or a config file would be."""
    key, sep, text = spec.partition("=")
    key = key.strip()
    if not sep or not key or not text.strip():
        raise ConfigError(f"--grid {spec!r}: expected KEY=V1,V2,... with KEY a config key")
    knob = knob_by_key(key)
    if key in SWEEP_OWNED_KEYS:
        raise ConfigError(f"--grid {key}: the sweep sets {', '.join(SWEEP_OWNED_KEYS)} itself (use --seeds, --output-dir)")
    if text.lstrip().startswith("["):
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"--grid {key}: invalid JSON array ({error.msg} at column {error.colno}): {text}") from None
        if not isinstance(raw, list) or not raw:
            raise ConfigError(f"--grid {key}: expected a non-empty JSON array of values, got {text}")
        texts = [json.dumps(value) for value in raw]
    else:
        if holds_collection(knob):
            raise ConfigError(f"--grid {key}: its values contain commas; give them as a JSON array, "
                              f"e.g. {key}=[{json.dumps(get_value(base, knob))}]")
        raw = texts = [item.strip() for item in text.split(",")]
        if not all(texts):
            raise ConfigError(f"--grid {key}: empty value in {text!r}")
    values = []
    for value in raw:
        try:
            values.append(get_value(override(base, key, value), knob))
        except ConfigError as error:
            raise ConfigError(f"--grid {key}: {error}") from None
    canonical = [json.dumps(value, sort_keys=True) for value in values]
    if len(set(canonical)) != len(canonical):
        raise ConfigError(f"--grid {key}: values repeat: {text}")
    return GridAxis(key, tuple(values), tuple(texts))


@dataclasses.dataclass(frozen=True)
class Configuration:
    """One point of the grid: its number and its values."""

    index: int
    overrides: dict[str, Any]

    @property
    def name(self) -> str:
        return f"config_{self.index:03d}"

    @property
    def label(self) -> str:
        return ", ".join(f"{key}={json.dumps(value)}" for key, value in self.overrides.items()) or "base config"


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    """Everything a trial needs to build its config and find its record (sent to the Ray workers)."""

    base: TrainConfig
    axes: tuple[GridAxis, ...]
    seeds: tuple[int, ...]
    output_dir: pathlib.Path
    metric: str
    source: str
    """Where the base config came from (for the report)."""

    def configurations(self) -> list[Configuration]:
        """The grid's cartesian product, last key varying fastest."""
        keys = [axis.key for axis in self.axes]
        product = itertools.product(*(axis.values for axis in self.axes))
        return [Configuration(i, dict(zip(keys, values))) for i, values in enumerate(product)]

    def index_of(self, texts: Mapping[str, str]) -> int:
        """Number of the configuration whose values are written ``texts[key]`` (Optuna's choices)."""
        index = 0
        for axis in self.axes:
            index = index * len(axis.texts) + axis.texts.index(texts[axis.key])
        return index

    def trial_config(self, configuration: Configuration, seed: int) -> TrainConfig:
        """The trial's config: it writes into exactly its planned ``config_NNN/seed_S`` directory
        (not numbered), which a rerun of an unfinished or failed trial rewrites."""
        config = self.base
        for key, value in configuration.overrides.items():
            config = override(config, key, value)
        run_dir = self.output_dir / configuration.name / f"seed_{seed}"
        return dataclasses.replace(config, seed=seed, output_dir=str(run_dir), number_runs=False, overwrite=True)

    def record_path(self, configuration: Configuration, seed: int) -> pathlib.Path:
        return self.output_dir / TRIALS_DIR / f"{configuration.name}_seed_{seed}.json"


def seeds_from(base: TrainConfig, count: int) -> tuple[int, ...]:
    """``count`` consecutive training seeds from the base config's."""
    return tuple(base.seed + k for k in range(count))


def make_plan(config_path: str | None, grid: Sequence[str], seeds: int, output_dir: str | None, metric: str) -> SweepPlan:
    """The plan from the command line's values; every user error raises :class:`ConfigError`."""
    base = resolve_config(config_path)
    source = config_path or "built-in defaults"
    if not base.evaluation.enabled:
        raise ConfigError(f"{source}: evaluation.enabled is false; the sweep ranks configurations by their evaluation")
    if seeds < 1:
        raise ConfigError(f"--seeds: must be >= 1, got {seeds}")
    axes = tuple(parse_grid(spec, base) for spec in grid)
    keys = [axis.key for axis in axes]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ConfigError(f"--grid: key given twice: {', '.join(repeated)} (list all its values in one --grid)")
    out = pathlib.Path(output_dir or f"{base.output_dir}_sweep").resolve()
    return SweepPlan(base, axes, seeds_from(base, seeds), out, metric, source)


def preflight_all(plan: SweepPlan) -> None:
    """Catch bad names and paths of every configuration before any trial starts."""
    for configuration in plan.configurations():
        try:
            preflight(plan.trial_config(configuration, plan.seeds[0]))
        except ConfigError as error:
            raise ConfigError(f"{configuration.name} ({configuration.label}): {error}") from None
