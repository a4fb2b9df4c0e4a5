"""``python -m sb3_klppo sweep``: every (configuration, seed) of a grid or an Optuna search as a
Ray Tune trial, and the aggregate report over seeds.

A configuration is the base config with one value per ``--grid`` key; configurations are
numbered by their place in the grid's cartesian product (``config_000``, ...), for a grid search
and for Optuna alike. Seed ``k`` of ``--seeds N`` sets the config's ``seed`` to
``base seed + k``; the evaluation workloads (``evaluation.seed``) stay the same for every trial, so
configurations are compared seed by seed on identical workloads (a paired comparison).

Layout of ``--output-dir``::

    config_000/seed_0/    the trial's run directory (model.zip, report.md, summary.json, ...)
    trials/config_000_seed_0.json    the trial's record: status, run dir, metrics or error
    sweep.json, sweep.md  the aggregate report, rebuilt from every record at the end
    ray/                  Ray Tune's own experiment logs

The records are the sweep's state: running the same command again skips every trial whose
record says it finished and runs the others (an interrupted sweep resumes; failed trials are
retried). Ray is imported only when trials run, so ``import sb3_klppo`` does not need it.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import math
import os
import pathlib
import sys
import traceback
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from sb3_klppo.config import ConfigError, TrainConfig, config_to_dict, get_value, load_config
from sb3_klppo.pipeline import knob_by_key, model_metrics, override, preflight, run_training
from vidur_env.student_t import CONFIDENCE, mean_half_width, t_central_mass

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
RAY_DIR = "ray"
OPTUNA_DB, OPTUNA_STUDY = "optuna.db", "sweep"
"""The Optuna study of ``--search optuna`` (SQLite, in the sweep directory) and its name."""
SWEEP_JSON, SWEEP_MD = "sweep.json", "sweep.md"
OK, FAILED, NOT_RUN = "ok", "failed", "not run"
"""Trial statuses in the report."""
EXIT_FAILED_TRIALS = 1
"""Exit status when the sweep finished but some trial failed (2 stays for user errors)."""


# ---------------------------------------------------------------------------------------------
# Statistics over seeds (the t distribution is vidur_env.student_t's)
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Mean of a sample with its t confidence interval (None below two values)."""

    n: int
    mean: float | None
    std: float | None
    ci_low: float | None
    ci_high: float | None

    @property
    def half_width(self) -> float | None:
        return None if self.ci_high is None else (self.ci_high - self.ci_low) / 2

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "std": self.std,
                "ci95": None if self.ci_low is None else [self.ci_low, self.ci_high]}


def estimate(values: Iterable[float | None], confidence: float = CONFIDENCE) -> Estimate:
    """Mean, sample std and t interval of the finite values (missing and NaN ones are not counted)."""
    sample = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = sample.size
    if n == 0:
        return Estimate(0, None, None, None, None)
    mean = float(sample.mean())
    if n == 1:
        return Estimate(1, mean, None, None, None)
    std = float(sample.std(ddof=1))
    half = mean_half_width(std, n, confidence)
    return Estimate(n, mean, std, mean - half, mean + half)


def paired_p_value(differences: Estimate) -> float | None:
    """Two-sided p-value of the paired t-test that the mean difference is 0."""
    if differences.n < 2:
        return None
    if differences.std == 0:
        return 0.0 if differences.mean != 0 else 1.0
    t = differences.mean / (differences.std / math.sqrt(differences.n))
    return 1.0 - t_central_mass(t, differences.n - 1)


# ---------------------------------------------------------------------------------------------
# The plan: grid, configurations, seeds, where each trial writes
# ---------------------------------------------------------------------------------------------


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
        if isinstance(get_value(base, knob), (list, dict)):
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
    base = load_config(config_path) if config_path else TrainConfig()
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


# ---------------------------------------------------------------------------------------------
# Trial records: the sweep's state on disk
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Ray Tune
# ---------------------------------------------------------------------------------------------


def trial_of(plan: SweepPlan, params: Mapping[str, Any]) -> tuple[int, int]:
    """(configuration index, seed) of a Tune trial's parameters: ``trial`` for a grid search,
    the keys' choices and the Repeater's index for Optuna."""
    if "trial" in params:
        return params["trial"]["configuration"], params["trial"]["seed"]
    from ray.tune.search.repeater import TRIAL_INDEX

    return plan.index_of(params), plan.seeds[params[TRIAL_INDEX]]


def tune_trainable(params: dict[str, Any], plan: SweepPlan) -> None:
    """The Ray Tune function trainable: one trial, its metrics reported once."""
    from ray import tune

    tune.report(run_trial(plan, *trial_of(plan, params)))


@dataclasses.dataclass(frozen=True)
class RayOptions:
    """Where and how wide the trials run."""

    address: str | None = None
    """An existing cluster (``auto``, ``ray://host:10001``); None starts a local Ray."""
    num_cpus: int | None = None
    """CPUs of the local Ray (None: every core of this machine)."""
    cpus_per_trial: float = 1.0
    max_concurrent: int = 0
    """Trials at once (0: as many as the CPUs allow)."""


def start_ray(options: RayOptions) -> bool:
    """Connect to (or start) Ray unless this process already has; True when we started it."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address=options.address, num_cpus=None if options.address else options.num_cpus,
             include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0"}})
    return True


def progress_callback(plan: SweepPlan):
    """A Tune callback printing one line per finished trial (Tune itself runs quietly)."""
    from ray.tune import Callback

    class TrialProgress(Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            index, seed = trial_of(plan, trial.config)
            value = (trial.last_result or {}).get(plan.metric)
            shown = f"{value:.4g}" if isinstance(value, (int, float)) else value
            print(f"{plan.configurations()[index].name} seed {seed}: done, {plan.metric} {shown}", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            index, seed = trial_of(plan, trial.config)
            print(f"{plan.configurations()[index].name} seed {seed}: FAILED (error in sweep.md)", flush=True)

    return TrialProgress()


def run_tune(plan: SweepPlan, options: RayOptions, *, param_space: dict[str, Any], search_alg: Any = None,
             num_samples: int = 1) -> None:
    """Run the trials on Ray Tune; record the failures Ray saw but the trial could not (a dead worker)."""
    from ray import tune

    started = start_ray(options)
    try:
        trainable = tune.with_resources(tune.with_parameters(tune_trainable, plan=plan), {"cpu": options.cpus_per_trial})
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(search_alg=search_alg, num_samples=num_samples,
                                        max_concurrent_trials=options.max_concurrent or None),
            run_config=tune.RunConfig(storage_path=str(plan.output_dir / RAY_DIR), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=0),
                                      callbacks=[progress_callback(plan)]),
        )
        for result in tuner.fit():
            if result.error is None:
                continue
            index, seed = trial_of(plan, result.config)
            configuration = plan.configurations()[index]
            if not plan.record_path(configuration, seed).is_file():
                write_record(plan.record_path(configuration, seed), trial_record(
                    plan, configuration, seed, FAILED, error=str(result.error).strip().splitlines()[-1]))
    finally:
        if started:
            import ray

            ray.shutdown()


def grid_search(plan: SweepPlan, options: RayOptions) -> None:
    """Every (configuration, seed) not finished yet, one Tune trial each."""
    from ray import tune

    pending = [{"configuration": c.index, "seed": seed} for c in plan.configurations() for seed in plan.seeds
               if not finished(plan, c, seed)]
    if pending:
        run_tune(plan, options, param_space={"trial": tune.grid_search(pending)})


def optuna_search(plan: SweepPlan, options: RayOptions, trials: int) -> None:
    """Optuna's TPE samples configurations (the grid's values as categories) until its study holds
    ``trials`` finished samples; each sample runs every seed and Optuna is told the mean.

    The study lives in ``optuna.db`` in the sweep directory, so a rerun continues it. A configuration
    sampled again reuses its finished trials instead of training them again.
    """
    import optuna
    from ray import tune
    from ray.tune.search import Repeater
    from ray.tune.search.optuna import OptunaSearch

    plan.output_dir.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{plan.output_dir / OPTUNA_DB}")
    try:
        study = optuna.load_study(study_name=OPTUNA_STUDY, storage=storage)
        finished_samples = sum(trial.state.is_finished() for trial in study.trials)
    except KeyError:
        finished_samples = 0
    remaining = trials - finished_samples
    if remaining <= 0:
        return
    searcher = OptunaSearch(metric=plan.metric, mode=METRIC_MODES[plan.metric], storage=storage,
                            study_name=OPTUNA_STUDY, seed=plan.base.seed + finished_samples)
    run_tune(plan, options, param_space={axis.key: tune.choice(list(axis.texts)) for axis in plan.axes},
             search_alg=Repeater(searcher, repeat=len(plan.seeds)), num_samples=remaining * len(plan.seeds))


# ---------------------------------------------------------------------------------------------
# The aggregate report
# ---------------------------------------------------------------------------------------------


def trial_rows(plan: SweepPlan, search: str) -> list[dict[str, Any]]:
    """Every trial of the sweep: its record, or a ``not run`` row for a planned trial without one
    (a grid search plans them all; an Optuna search only what it sampled)."""
    rows = []
    for configuration in plan.configurations():
        for seed in plan.seeds:
            record = read_record(plan.record_path(configuration, seed))
            if record is not None:
                rows.append(record)
            elif search == "grid":
                rows.append(trial_record(plan, configuration, seed, NOT_RUN,
                                         error="no record: the trial did not finish (interrupted?); run the sweep again"))
    return rows


def paired_comparison(best: Mapping[int, float], other: Mapping[int, float], mode: str) -> dict[str, Any]:
    """``best - other`` seed by seed (same seed, same workloads) with its CI and paired t-test."""
    seeds = sorted(set(best) & set(other))
    differences = estimate([best[s] - other[s] for s in seeds])
    p_value = paired_p_value(differences)
    if differences.ci_low is None:
        verdict = "too few common seeds for a confidence interval"
    elif (differences.ci_high < 0) if mode == "min" else (differences.ci_low > 0):
        verdict = f"better with {CONFIDENCE:.0%} confidence"
    else:
        verdict = f"not distinguishable at {CONFIDENCE:.0%} confidence (the interval includes 0; more seeds narrow it)"
    return {"seeds": seeds, "difference": differences.to_json(), "p_value": p_value, "verdict": verdict}


def aggregate(plan: SweepPlan, rows: Sequence[Mapping[str, Any]], search: str) -> dict[str, Any]:
    """The sweep's report: per configuration every metric's mean and CI over seeds, the ranking by
    ``plan.metric``, the best configuration against the runner-up, and every failed trial."""
    labels = {c.index: c for c in plan.configurations()}
    by_config: dict[int, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_config.setdefault(row["configuration"], []).append(row)
    configurations = []
    for index, trials in sorted(by_config.items()):
        ok = [t for t in trials if t["status"] == OK]
        configurations.append({
            "name": labels[index].name, "index": index, "label": labels[index].label,
            "overrides": labels[index].overrides, "seeds_ok": [t["seed"] for t in ok],
            "trials": [{key: t.get(key) for key in ("seed", "status", "run_dir", "metrics", "error")} for t in trials],
            "metrics": {m: estimate(t["metrics"].get(m) for t in ok).to_json() for m in METRIC_MODES},
        })
    mode = METRIC_MODES[plan.metric]
    ranked = sorted((c for c in configurations if c["metrics"][plan.metric]["n"]),
                    key=lambda c: (c["metrics"][plan.metric]["mean"] * (1 if mode == "min" else -1), c["index"]))
    report: dict[str, Any] = {
        "base_config": plan.source, "output_dir": str(plan.output_dir), "search": search,
        "seeds": list(plan.seeds), "grid": {axis.key: list(axis.values) for axis in plan.axes},
        "metric": plan.metric, "mode": mode, "confidence": CONFIDENCE,
        "ranking": [c["name"] for c in ranked], "best": None, "comparison": None,
        "configurations": configurations,
        "failed": [{"name": labels[r["configuration"]].name, "label": r["label"], "seed": r["seed"],
                    "status": r["status"], "error": r.get("error")} for r in rows if r["status"] != OK],
    }
    if ranked:
        report["best"] = ranked[0]["name"]
    if len(ranked) > 1:
        per_seed = [{t["seed"]: t["metrics"][plan.metric] for t in c["trials"] if t["status"] == OK
                     and t["metrics"].get(plan.metric) is not None} for c in ranked[:2]]
        report["comparison"] = {"best": ranked[0]["name"], "runner_up": ranked[1]["name"],
                                **paired_comparison(per_seed[0], per_seed[1], mode)}
    return report


def _cell(estimate_json: Mapping[str, Any]) -> str:
    if estimate_json["mean"] is None:
        return "-"
    if estimate_json["ci95"] is None:
        return f"{estimate_json['mean']:.4g}"
    low, high = estimate_json["ci95"]
    return f"{estimate_json['mean']:.4g} ± {(high - low) / 2:.2g}"


def render_markdown(report: Mapping[str, Any]) -> str:
    """``sweep.md``: the table of means ± CI half-widths, the verdict on the best, the failures."""
    metric, mode = report["metric"], report["mode"]
    lines = [f"# Sweep over `{report['base_config']}`", "",
             f"Search: {report['search']}; seeds {', '.join(map(str, report['seeds']))}; "
             f"grid: {', '.join(report['grid']) or 'none'}. Each cell: mean over seeds ± half-width of the "
             f"{report['confidence']:.0%} t confidence interval (trained policy's evaluation; latencies in "
             "seconds, throughput in requests/s).", ""]
    header = ["configuration", "values", "seeds ok", *METRIC_MODES]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in report["configurations"]:
        cells = [c["name"], c["label"], f"{len(c['seeds_ok'])}/{len(c['trials'])}",
                 *(_cell(c["metrics"][m]) for m in METRIC_MODES)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"## Best by {metric} ({'lower' if mode == 'min' else 'higher'} is better)", ""]
    by_name = {c["name"]: c for c in report["configurations"]}
    if report["best"] is None:
        lines.append("No configuration finished a trial.")
    else:
        best = by_name[report["best"]]
        lines.append(f"`{best['name']}` ({best['label']}): {metric} {_cell(best['metrics'][metric])}.")
        lines.append(f"Ranking: {', '.join(report['ranking'])}.")
    comparison = report["comparison"]
    if comparison:
        difference = comparison["difference"]
        interval = "no interval" if difference["ci95"] is None else \
            f"{report['confidence']:.0%} CI [{difference['ci95'][0]:.4g}, {difference['ci95'][1]:.4g}]"
        p_value = "" if comparison["p_value"] is None else f", paired t-test p = {comparison['p_value']:.3g}"
        lines += ["", f"Against the runner-up `{comparison['runner_up']}`, seed by seed on the same workloads "
                  f"({len(comparison['seeds'])} seeds): {metric} difference {difference['mean']:.4g} "
                  f"({interval}{p_value}): {comparison['verdict']}."]
    if report["failed"]:
        lines += ["", "## Failed trials", ""]
        lines += [f"- `{f['name']}` seed {f['seed']} ({f['label']}): {f['status']}: {f['error']}" for f in report["failed"]]
    return "\n".join(lines) + "\n"


def write_report(plan: SweepPlan, search: str) -> dict[str, Any]:
    """Aggregate every record into ``sweep.json`` and ``sweep.md``; return the report."""
    report = aggregate(plan, trial_rows(plan, search), search)
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    (plan.output_dir / SWEEP_JSON).write_text(json.dumps(report, indent=2, default=str) + "\n")
    (plan.output_dir / SWEEP_MD).write_text(render_markdown(report))
    return report


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def add_sweep_parser(commands: Any) -> None:
    """The ``sweep`` subcommand's arguments (``commands`` is the CLI's subparsers object)."""
    sweep = commands.add_parser("sweep", help="train every (configuration, seed) on Ray Tune and aggregate over seeds")
    sweep.add_argument("--config", help="base JSON config file (default: the built-in defaults)")
    sweep.add_argument("--seeds", type=int, default=3, help="seeds per configuration: the config's seed, +1, ... (default 3)")
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                       help="config JSON key and its values (KEY=[JSON,...] for lists and objects); repeat for more keys")
    sweep.add_argument("--search", choices=("grid", "optuna"), default="grid",
                       help="every grid point (default), or Optuna's TPE sampling --trials of them")
    sweep.add_argument("--trials", type=int, help="configurations Optuna samples (each run with every seed)")
    sweep.add_argument("--metric", choices=tuple(METRIC_MODES), default="e2e_mean", metavar="NAME",
                       help="evaluation metric that ranks configurations and drives Optuna: "
                            f"{', '.join(METRIC_MODES)} (default e2e_mean)")
    sweep.add_argument("--output-dir", help="sweep directory (default: the config's output_dir + '_sweep')")
    sweep.add_argument("--address", help="existing Ray cluster to run on (default: start a local Ray)")
    sweep.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all cores)")
    sweep.add_argument("--cpus-per-trial", type=float, help="CPUs reserved per trial (default: the config's torch_threads)")
    sweep.add_argument("--max-concurrent", type=int, default=0, help="trials at once (default: as CPUs allow)")


def check_arguments(args: argparse.Namespace, plan: SweepPlan) -> None:
    """Option combinations argparse cannot check."""
    if args.search == "optuna":
        if args.trials is None or args.trials < 1:
            raise ConfigError("--search optuna: give --trials N (N >= 1 configurations to sample)")
        if not any(len(axis.values) > 1 for axis in plan.axes):
            raise ConfigError("--search optuna: give at least one --grid key with two or more values to search over")
    elif args.trials is not None:
        raise ConfigError("--trials: applies to --search optuna only (a grid search runs every configuration)")
    if args.address and args.num_cpus:
        raise ConfigError("--num-cpus: sets the local Ray's size; a cluster given by --address has its own")
    if args.num_cpus is not None and args.num_cpus < 1:
        raise ConfigError(f"--num-cpus: must be >= 1, got {args.num_cpus}")
    if args.cpus_per_trial is not None and args.cpus_per_trial <= 0:
        raise ConfigError(f"--cpus-per-trial: must be > 0, got {args.cpus_per_trial}")
    if args.max_concurrent < 0:
        raise ConfigError(f"--max-concurrent: must be >= 0, got {args.max_concurrent}")


def run_sweep_command(args: argparse.Namespace) -> int:
    """``sweep``: plan, run the unfinished trials, write the report; 0 when every trial succeeded."""
    try:
        plan = make_plan(args.config, args.grid, args.seeds, args.output_dir, args.metric)
        check_arguments(args, plan)
        preflight_all(plan)
        check_records(plan)
    except (ValueError, OSError) as error:
        print(f"sb3-klppo: error: {error}", file=sys.stderr)
        return 2
    try:
        import ray.tune  # noqa: F401
    except ImportError:
        print("sb3-klppo: error: sweep needs Ray Tune: pip install 'vidur-env[sweep]'", file=sys.stderr)
        return 2
    options = RayOptions(args.address, args.num_cpus, args.cpus_per_trial or plan.base.torch_threads, args.max_concurrent)
    if args.search == "optuna":
        optuna_search(plan, options, args.trials)
    else:
        grid_search(plan, options)
    report = write_report(plan, args.search)
    print(f"wrote {plan.output_dir / SWEEP_MD} ({len(report['configurations'])} configurations, "
          f"{len(report['failed'])} trials not ok; best by {plan.metric}: {report['best']})")
    unfinished = sum(trial["status"] == NOT_RUN for trial in report["failed"])
    if unfinished:
        print(f"{unfinished} trials did not finish (interrupted); run the same command again to resume them")
    return EXIT_FAILED_TRIALS if report["failed"] else 0
