"""Running the sweep's trials on Ray Tune: a grid search over every unfinished (configuration,
seed), or Optuna's TPE sampling configurations. Ray and Optuna are imported only here, inside the
functions, so the rest of the package does not need them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

from sb3_klppo.sweep_plan import METRIC_MODES, SweepPlan
from sb3_klppo.sweep_trials import FAILED, finished, run_trial, trial_record, write_record

RAY_DIR = "ray"
"""Ray Tune's own experiment logs, in the sweep directory."""
OPTUNA_DB, OPTUNA_STUDY = "optuna.db", "sweep"
"""The Optuna study of ``--search optuna`` (SQLite, in the sweep directory) and its name."""


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
