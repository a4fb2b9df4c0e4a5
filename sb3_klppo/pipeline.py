"""The training pipeline as one Python call: config in, run directory and summary out.

    from sb3_klppo.pipeline import model_metrics, run_training

    run_dir, summary = run_training("configs/ppo_warmstart.json",
                                    overrides={"kl_regularization.kl_coef": 0.05, "seed": 1,
                                               "output_dir": "runs/kl005_seed1"})
    print(run_dir, model_metrics(summary)["e2e_mean"])

Top to bottom: build the vectorised env, claim a new run directory (never an existing run's,
see :mod:`sb3_klppo.run_dirs`), warm start by behaviour cloning the expert router (the clone
becomes the KL reference), train KLPPO with the monitoring callbacks and a fixed-seed learning
curve, save ``model.zip``, evaluate it against the heuristics with the env's harness, and write
``report.md`` with its plots. ``python -m sb3_klppo train`` and every sweep trial run exactly this.

:func:`run_training` is the entry for other tools (Optuna, RL Zoo, notebooks, the sweep): any
config form plus overrides keyed by the config's JSON keys (``python -m sb3_klppo flags`` lists
them), checked like the file and the flags are (a bad key or value raises
:class:`~sb3_klppo.config.ConfigError` naming it), and the JSON summary back. :func:`train` is the
same run for a resolved config, returning the in-memory :class:`~sb3_klppo.records.RunSummary`
(model, evaluation result, callbacks) that the command line prints from.

With :mod:`sb3_klppo.cli` and the sweep (:mod:`sb3_klppo.sweep` and its parts) this is the job
layer: the only modules that import ``vidur_env``. Output follows ``monitoring.verbose``: 0 prints
nothing here, 1 adds one progress bar over the whole job, 2 adds SB3's logger table at every update.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import pathlib
import re
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from sb3_klppo import report
from sb3_klppo.behaviour_cloning import BCReport, behaviour_clone
from sb3_klppo.callbacks import (
    CURVE_FIGURES,
    KLStatsCSVCallback,
    PeriodicEvaluation,
    RefKLScheduleLogger,
    TargetKLExceededWarning,
    TargetKLMonitor,
)
from sb3_klppo.config import (
    VEC_ENV_CLASSES,
    ConfigError,
    Knob,
    TrainConfig,
    all_knobs,
    apply_overrides,
    check_value,
    config_from_dict,
    load_config,
    save_config,
    with_value,
)
from sb3_klppo.input_baseline import InputDrivenRolloutBuffer, SharedWorkloadSeed, check_group_size
from sb3_klppo.klppo import KLPPO
from sb3_klppo.progress import JobProgress, StepCounter
from sb3_klppo.records import LearningCurve, RolloutRecorder, RunSummary, TrainingCallbacks, UpdateRecorder
from sb3_klppo.run_dirs import claim_run_dir, training_seed

EVAL_REQUESTS_KWARG = "num_requests"
"""The env keyword that sets the requests of one episode (``evaluation.num_requests``)."""
NORMALIZER_FILE = "vecnormalize.pkl"
"""File of the reward normaliser's statistics, next to ``model.zip``."""
VIDUR_ENV_NAME = "VidurRouting-v0"
"""The env the evaluation harness (vidur_env.evaluation) simulates."""
BC_SEED_OFFSET = 10_000
"""The cloning env's seed is the run's seed plus this (its workloads differ from training's)."""
RESUMABLE_PPO_KEYS = ("n_steps", "batch_size", "n_epochs", "learning_rate", "gamma", "gae_lambda",
                      "clip_range", "ent_coef", "vf_coef", "max_grad_norm")
"""PPO settings a resumed model takes from the config (the policy architecture stays the saved one)."""

ConfigLike = TrainConfig | Mapping[str, Any] | str | os.PathLike | None
"""A config: the dataclass, a JSON-like dict (missing keys take their defaults), a JSON file, or
None for the built-in defaults."""


# ---------------------------------------------------------------------------------------------
# The public entry: any config form and overrides in, the run directory and its summary out
# ---------------------------------------------------------------------------------------------


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
    if isinstance(value, (str, bool)):
        return apply_overrides(config, {knob: value})
    try:
        return with_value(config, knob, check_value(knob, value))
    except ValueError as error:
        raise ConfigError(f"{key}: {error}") from None


def resolve_config(config: ConfigLike, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """The :class:`TrainConfig` of ``config`` (dataclass, dict, file or None) with ``overrides`` applied in order."""
    if config is None:
        resolved = TrainConfig()
    elif isinstance(config, TrainConfig):
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

    :param config: a :class:`TrainConfig`, a JSON-like dict, the path of a JSON or YAML config file, or
        None for the built-in defaults.
    :param overrides: ``{json_key: value}`` applied on top (see :func:`override`), e.g.
        ``{"seed": 3, "output_dir": "runs/s3"}``.
    :return: ``(run_dir, summary)``; ``run_dir`` is the numbered ``runs/s3_<N>`` the run claimed
        (``output_dir`` itself with ``"number_runs": False``); ``summary`` is its ``summary.json``
        (timings, cloning accuracy, per-update training figures and, when evaluation is enabled,
        ``evaluation``: one row of metrics per policy; :func:`model_metrics` picks the trained policy's).
    :raises ConfigError: a bad config, key or value (before any training).
    """
    summary = train(resolve_config(config, overrides))
    return summary.output_dir, json.loads((summary.output_dir / report.SUMMARY_FILE).read_text())


def model_metrics(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The trained policy's evaluation row of a run summary (``e2e_mean``, ``ttft_p99``, ``throughput``...;
    latencies in seconds); empty when the run was not evaluated."""
    rows = summary.get("evaluation") or {}
    return dict(rows.get(report.MODEL_NAME, {}))


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------



def is_vidur_env(config: TrainConfig) -> bool:
    """Whether the configured env is the one the evaluation harness simulates."""
    return config.env.id.rpartition(":")[2] == VIDUR_ENV_NAME


def preflight(config: TrainConfig) -> None:
    """Catch the errors that would otherwise surface only after training: names and paths."""
    if config.resume and not pathlib.Path(config.resume).is_file():
        raise ConfigError(f"resume: no saved model at {config.resume}")
    if config.warm_start.enabled and not config.resume:
        make_expert(config.warm_start.expert, config.seed)
    if config.monitoring.keep_best is not None and not config.monitoring.curve_every:
        raise ConfigError("monitoring.keep_best: the best policy is chosen on the learning curve; "
                          "set monitoring.curve_every above 0 (--curve-every)")
    if config.evaluation.enabled:
        if not is_vidur_env(config):
            raise ConfigError(f"evaluation: the harness runs {VIDUR_ENV_NAME} only, not env.id {config.env.id!r}; "
                              "use --no-evaluate")
        from vidur_env.evaluation import check_router_names

        try:
            check_router_names(evaluation_routers(config))
        except ValueError as error:
            raise ConfigError(f"evaluation.routers: {error}") from None


def make_vec_env(config: TrainConfig, seed: int, progress: JobProgress | None = None,
                 group_size: int = 1) -> VecEnv:
    """``n_envs`` Monitor-wrapped copies of the configured env in a DummyVecEnv or SubprocVecEnv
    (``ppo.vec_env``), seeded from ``seed``, every ``group_size`` consecutive copies alike
    (:class:`SharedWorkloadSeed`, for the input-driven baseline),
    counted by the job's progress bar when given, under a reward-only VecNormalize when
    ``ppo.normalize_reward`` is set.

    Monitor sits inside the normaliser, so logged episode returns stay in the env's units.
    """
    env_id, kwargs, n_envs = config.env.id, config.env.kwargs, config.ppo.n_envs
    check_group_size(group_size, n_envs)

    def factory(member: int) -> Callable[[], gym.Env]:
        if group_size == 1:  # no wrapper on the step path when nothing is shared
            return lambda: Monitor(gym.make(env_id, **kwargs))
        return lambda: Monitor(SharedWorkloadSeed(gym.make(env_id, **kwargs), member))

    try:
        venv: VecEnv = VEC_ENV_CLASSES[config.ppo.vec_env]([factory(i % group_size) for i in range(n_envs)])
    except (ImportError, gym.error.Error) as error:
        raise ConfigError(f"env.id {env_id!r}: {error}") from None
    except TypeError as error:
        raise ConfigError(f"env.kwargs: {error}") from None
    venv.seed(seed)
    if progress is not None:
        venv = StepCounter(venv, progress)
    if config.ppo.normalize_reward:
        venv = VecNormalize(venv, norm_obs=False, norm_reward=True, gamma=config.ppo.gamma)
    return venv


def reward_normalizer_path(model_path: str | pathlib.Path) -> pathlib.Path:
    """Where the reward normaliser's statistics are saved next to a model zip: ``vecnormalize.pkl``
    for ``model.zip``, SB3's ``<prefix>_vecnormalize_<n>_steps.pkl`` for a checkpoint."""
    path = pathlib.Path(model_path)
    checkpoint = re.fullmatch(r"(.+)_(\d+)_steps\.zip", path.name)
    if checkpoint:
        return path.with_name(f"{checkpoint[1]}_vecnormalize_{checkpoint[2]}_steps.pkl")
    return path.with_name(NORMALIZER_FILE)


def restore_reward_normalizer(venv: VecEnv, model_path: str | pathlib.Path) -> bool:
    """Continue a resumed run with its saved reward statistics, when both sides normalise."""
    saved = reward_normalizer_path(model_path)
    if not (isinstance(venv, VecNormalize) and saved.is_file()):
        return False
    venv.ret_rms = VecNormalize.load(str(saved), venv.venv).ret_rms
    return True


def klppo_kwargs(config: TrainConfig) -> dict[str, Any]:
    """KLPPO's keyword arguments from the ppo and kl_regularization blocks (target_kl excluded:
    it drives :class:`TargetKLMonitor`, not SB3's early stop)."""
    kl = dataclasses.asdict(config.kl_regularization)
    kl.pop("target_kl")
    ppo = {key: getattr(config.ppo, key) for key in RESUMABLE_PPO_KEYS}
    if config.ppo.baseline_group > 1:
        ppo["rollout_buffer_class"] = InputDrivenRolloutBuffer
        ppo["rollout_buffer_kwargs"] = {"group_size": config.ppo.baseline_group}
    return {**ppo, **kl}


def sb3_verbose(config: TrainConfig) -> int:
    """SB3's own messages (device, early stops) only at the job's verbose 2."""
    return 1 if config.monitoring.verbose >= 2 else 0


def build_model(config: TrainConfig, venv: VecEnv) -> KLPPO:
    """A fresh KLPPO, or the ``resume`` model with the config's hyperparameters and its own schedule
    step, seeded to continue the run's seed sequence (:func:`training_seed`)."""
    if config.resume:
        model = KLPPO.load(config.resume, env=venv, device="cpu", verbose=sb3_verbose(config), **klppo_kwargs(config))
        model.set_random_seed(training_seed(config.seed, model.num_timesteps))
        return model
    try:
        return KLPPO(
            config.ppo.policy,
            venv,
            policy_kwargs=config.ppo.policy_kwargs or None,
            seed=config.seed,
            device="cpu",
            verbose=sb3_verbose(config),
            **klppo_kwargs(config),
        )
    except TypeError as error:
        raise ConfigError(f"ppo.policy_kwargs: {error}") from None


def make_expert(name: str, seed: int):
    """The heuristic router ``name`` as an SB3-style policy (vidur_env's RouterPolicy)."""
    from vidur_env.routers import RouterPolicy

    try:
        return RouterPolicy(name, seed=seed)
    except ValueError as error:
        raise ConfigError(f"warm_start.expert: {error}") from None


def warm_start(config: TrainConfig, model: KLPPO, venv: VecEnv, progress: JobProgress) -> BCReport:
    """Clone the expert on a separate env copy, then freeze the clone as the KL reference.

    The copy's reward statistics (gathered while the expert drove it) seed the training env's,
    so PPO starts with rewards on the scale the critic was fitted to.
    """
    ws = config.warm_start
    expert = make_expert(ws.expert, config.seed)
    bc_env = make_vec_env(config, seed=config.seed + BC_SEED_OFFSET, progress=progress)
    bc_report = behaviour_clone(
        model,
        bc_env,
        expert,
        n_samples=ws.n_samples,
        epochs=ws.bc_epochs,
        batch_size=ws.bc_batch_size,
        learning_rate=ws.bc_learning_rate,
        fit_value=ws.fit_value,
        seed=config.seed,
    )
    if isinstance(venv, VecNormalize) and isinstance(bc_env, VecNormalize):
        venv.ret_rms = copy.deepcopy(bc_env.ret_rms)
    bc_env.close()
    model.set_reference_policy()
    return bc_report


def make_callbacks(config: TrainConfig, out: pathlib.Path, curve: PeriodicEvaluation | None) -> TrainingCallbacks:
    """Recorders, the target-KL monitor, the learning curve, the KL CSV, the schedule log and
    optional checkpoints."""
    mon, target = config.monitoring, config.kl_regularization.target_kl
    monitor = TargetKLMonitor(target, action=mon.target_kl_action, patience=mon.target_kl_patience) if target else None
    others: list[BaseCallback] = [RefKLScheduleLogger()]
    if mon.csv:
        others.append(KLStatsCSVCallback(out / "kl_stats.csv"))
    if mon.checkpoint_freq:
        others.append(CheckpointCallback(mon.checkpoint_freq, str(out / "checkpoints"), name_prefix="model",
                                         save_vecnormalize=True))
    return TrainingCallbacks(RolloutRecorder(), UpdateRecorder(), monitor, curve, others)


def evaluation_routers(config: TrainConfig) -> list[str]:
    """The configured heuristics (null: every load-only router of vidur_env's registry) plus the
    warm-start teacher, each once, in order."""
    from vidur_env.routers import load_only_routers

    configured = config.evaluation.routers
    routers = load_only_routers() if configured is None else list(configured)
    if config.warm_start.enabled and config.warm_start.expert not in routers:
        routers.append(config.warm_start.expert)
    return routers


def evaluation_env_kwargs(config: TrainConfig) -> dict[str, Any]:
    """The training scenario with the evaluation's episode length."""
    env_kwargs = dict(config.env.kwargs)
    if config.evaluation.num_requests is not None:
        env_kwargs[EVAL_REQUESTS_KWARG] = config.evaluation.num_requests
    return env_kwargs


def evaluate_model(config: TrainConfig, model: BaseAlgorithm, progress: JobProgress):
    """The trained model and the heuristics on the same workloads, with vidur_env's harness."""
    from vidur_env.evaluation import evaluate

    ev = config.evaluation
    return evaluate(evaluation_env_kwargs(config), evaluation_routers(config), model=model,
                    model_name=report.MODEL_NAME, episodes=ev.episodes, seed=ev.seed, deterministic=True,
                    progress=progress.advance)


class CurveRunner:
    """The learning curve's fixed episodes: seeds right after the final evaluation's, so neither
    the training nor the final evaluation workloads are reused; the teacher runs them once."""

    def __init__(self, config: TrainConfig, progress: JobProgress) -> None:
        ev, mon = config.evaluation, config.monitoring
        self.config, self.progress = config, progress
        self.seed, self.episodes = ev.seed + ev.episodes, mon.curve_episodes
        self.seconds = 0.0

    def _run(self, routers: list[str], model: BaseAlgorithm | None) -> dict[str, float]:
        from vidur_env.evaluation import evaluate

        start = time.perf_counter()
        result = evaluate(evaluation_env_kwargs(self.config), routers, model=model, model_name=report.MODEL_NAME,
                          episodes=self.episodes, seed=self.seed, lower_bound=False, progress=self.progress.advance)
        self.seconds += time.perf_counter() - start
        row = result.rows[report.MODEL_NAME if model is not None else routers[0]]
        return {key: row[key] for key in CURVE_FIGURES}

    def policy(self, model: BaseAlgorithm) -> dict[str, float]:
        self.progress.phase("learning curve")
        figures = self._run([], model)
        self.progress.phase("training")
        return figures

    def reference(self) -> dict[str, float]:
        self.progress.phase("learning curve")
        return self._run([self.config.warm_start.expert], None)

    def seeds(self) -> list[int]:
        return list(range(self.seed, self.seed + self.episodes))


def planned_steps(config: TrainConfig, episode_requests: int) -> int:
    """Env steps the job will take: cloning, full PPO rollouts, the curve's and the final evaluation."""
    ppo, ws, ev, mon = config.ppo, config.warm_start, config.evaluation, config.monitoring
    rollout = ppo.n_steps * ppo.n_envs
    updates = math.ceil(ppo.total_timesteps / rollout)
    steps = updates * rollout
    if ws.enabled and not config.resume:
        steps += math.ceil(ws.n_samples / ppo.n_envs) * ppo.n_envs
    if mon.curve_every:
        points = 2 + updates // mon.curve_every - (updates % mon.curve_every == 0)
        steps += (points + 1) * mon.curve_episodes * episode_requests
    if ev.enabled:
        steps += ev.episodes * (len(evaluation_routers(config)) + 1) * episode_requests
    return steps


def log_formats(config: TrainConfig) -> list[str]:
    """SB3 logger outputs: its stdout table only at verbose 2."""
    mon = config.monitoring
    return [*(["stdout"] if mon.verbose >= 2 else []), *(["csv"] if mon.csv else []),
            *(["tensorboard"] if mon.tensorboard else [])]


def train(config: TrainConfig) -> RunSummary:
    """Run the whole job for ``config`` in a new run directory (see :mod:`sb3_klppo.run_dirs`)."""
    preflight(config)
    start = time.perf_counter()
    th.set_num_threads(config.torch_threads)
    mon = config.monitoring
    progress = JobProgress(enabled=mon.verbose >= 1 and mon.progress_bar)
    try:
        with warnings.catch_warnings():
            if mon.verbose < 2:  # counted in the report's training health instead
                warnings.simplefilter("ignore", TargetKLExceededWarning)
            summary = run_job(config, progress)
    finally:
        progress.close()
    summary.timings["total"] = time.perf_counter() - start
    report.write_report(summary)
    return summary


def run_job(config: TrainConfig, progress: JobProgress) -> RunSummary:
    """The pipeline proper (see the module docstring); timings in seconds per phase."""
    timings: dict[str, float] = {}
    notes: list[str] = []

    # Environment, model and run directory
    venv = make_vec_env(config, seed=config.seed, progress=progress, group_size=config.ppo.baseline_group)
    model = build_model(config, venv)
    env_seed = training_seed(config.seed, model.num_timesteps if config.resume else 0)
    curve_on = bool(config.monitoring.curve_every)
    if curve_on and not is_vidur_env(config):
        raise ConfigError(f"monitoring.curve_every: the learning curve runs {VIDUR_ENV_NAME} only, "
                          f"not env.id {config.env.id!r}; use --curve-every 0")
    needs_harness = curve_on or config.evaluation.enabled
    episode_requests = (config.evaluation.num_requests or int(venv.get_attr(EVAL_REQUESTS_KWARG)[0])) if needs_harness else 0
    progress.plan(planned_steps(config, episode_requests))
    out = claim_run_dir(config.output_dir, config.number_runs, config.overwrite)
    save_config(dataclasses.replace(config, output_dir=str(out), number_runs=False), out / "config_used.json")
    model.set_logger(configure(str(out), log_formats(config)))

    # Warm start: behaviour cloning of the expert, the clone becomes the reference
    bc_report = None
    if config.resume:
        if restore_reward_normalizer(venv, config.resume):
            notes.append(f"Reward normaliser restored from {reward_normalizer_path(config.resume)}.")
        notes.append(f"Resumed from {config.resume} at gradient step {model.kl_schedule_step} "
                     f"({model.num_timesteps} env steps); no warm start. Training envs seeded {env_seed}, "
                     f"continuing seed {config.seed}'s sequence, so the workloads differ from the first run's.")
    elif config.warm_start.enabled:
        progress.phase("cloning")
        phase = time.perf_counter()
        bc_report = warm_start(config, model, venv, progress)
        timings["warm_start"] = time.perf_counter() - phase

    # KL-regularised PPO, with the fixed-seed learning curve
    progress.phase("training")
    phase = time.perf_counter()
    runner = CurveRunner(config, progress) if curve_on else None
    evaluator = PeriodicEvaluation(runner.policy, config.monitoring.curve_every,
                                   keep_best=config.monitoring.keep_best) if runner else None
    curve = LearningCurve(evaluator.history, config.warm_start.expert, runner.reference(), runner.seeds()) \
        if runner and evaluator else None
    callbacks = make_callbacks(config, out, evaluator)
    model.learn(
        config.ppo.total_timesteps,
        callback=callbacks.as_list(),
        log_interval=config.monitoring.log_interval,
        reset_num_timesteps=not config.resume,
    )
    curve_seconds = runner.seconds if runner else 0.0
    timings["training"] = time.perf_counter() - phase - curve_seconds
    if runner:
        timings["learning_curve"] = curve_seconds
    if curve and evaluator and evaluator.best_point is not None:
        curve.kept = evaluator.best_point
        kept = evaluator.history[evaluator.best_point]
        notes.append(f"Model kept: the policy after {int(kept['timesteps'])} steps, the learning curve's best "
                     f"{config.monitoring.keep_best} ({kept[config.monitoring.keep_best]:.4g}; "
                     f"point {evaluator.best_point + 1} of {len(evaluator.history)}).")
    model.save(out / "model.zip")
    if isinstance(venv, VecNormalize):
        venv.save(str(reward_normalizer_path(out / "model.zip")))
    venv.close()

    # Evaluation against the heuristics
    summary = RunSummary(config, out, timings, bc_report, callbacks, model, env_seed, curve, notes=notes)
    if config.evaluation.enabled:
        progress.phase("evaluation")
        phase = time.perf_counter()
        summary.evaluation = evaluate_model(config, model, progress)
        timings["evaluation"] = time.perf_counter() - phase
    return summary
