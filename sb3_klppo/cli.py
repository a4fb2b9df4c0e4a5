"""``python -m sb3_klppo train --config FILE [overrides]`` (console script ``sb3-klppo``).

The training pipeline, top to bottom: resolve the config (file, then flags), build the
vectorised env, warm start by behaviour cloning the expert router (the clone becomes the KL
reference), train KLPPO with the monitoring callbacks, save ``model.zip``, evaluate it against
the heuristics with the env's harness, and write ``report.md`` with its plots.

Every user error (bad config, bad flag, unknown env or router, unreadable model) ends with a
one-line message on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import pathlib
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize

from sb3_klppo import report
from sb3_klppo.behaviour_cloning import BCReport, behaviour_clone
from sb3_klppo.callbacks import KLStatsCSVCallback, RefKLScheduleLogger, TargetKLMonitor, UpdateEndCallback
from sb3_klppo.config import (
    ConfigError,
    TrainConfig,
    all_knobs,
    apply_overrides,
    flag_table_markdown,
    get_value,
    load_config,
    metavar,
    save_config,
)
from sb3_klppo.klppo import KLPPO
from sb3_klppo.policies import ReplicaSetPolicy  # noqa: F401  (registers the "ReplicaSetPolicy" alias)

EVAL_REQUESTS_KWARG = "num_requests"
"""The env keyword that sets the requests of one episode (``evaluation.num_requests``)."""
NORMALIZER_FILE = "vecnormalize.pkl"
"""File of the reward normaliser's statistics, next to ``model.zip``."""
VIDUR_ENV_NAME = "VidurRouting-v0"
"""The env the evaluation harness (vidur_env.evaluation) simulates."""
RESUMABLE_PPO_KEYS = ("n_steps", "batch_size", "n_epochs", "learning_rate", "gamma", "gae_lambda",
                      "clip_range", "ent_coef", "vf_coef", "max_grad_norm")
"""PPO settings a resumed model takes from the config (the policy architecture stays the saved one)."""


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """``train`` with one flag per config knob (help from the knob's docstring), and ``flags``."""
    parser = argparse.ArgumentParser(prog="sb3-klppo", description="KL-regularised PPO training from JSON configs.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train, evaluate and report from a JSON config",
                                argument_default=argparse.SUPPRESS)
    train.add_argument("--config", help="JSON config file (default: the built-in defaults = configs/ppo_warmstart.json)")
    defaults = TrainConfig()
    groups: dict[str | None, Any] = {}
    for knob in all_knobs():
        if knob.block not in groups:
            groups[knob.block] = train.add_argument_group(knob.block or "run")
        help_text = f"{knob.help} [built-in: {json.dumps(get_value(defaults, knob))}]"
        if knob.annotation is bool:
            groups[knob.block].add_argument(knob.flag, dest=knob.dest, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            groups[knob.block].add_argument(knob.flag, dest=knob.dest, metavar=metavar(knob), help=help_text)
    commands.add_parser("flags", help="print the JSON key -> CLI flag table (markdown)")
    from sb3_klppo.sweep import add_sweep_parser  # the sweep module imports this one

    add_sweep_parser(commands)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config file (or the defaults) with every given flag applied on top."""
    config = load_config(args.config) if getattr(args, "config", None) else TrainConfig()
    given = {knob: getattr(args, knob.dest) for knob in all_knobs() if hasattr(args, knob.dest)}
    return apply_overrides(config, given)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sb3-klppo`` and ``python -m sb3_klppo``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "flags":
        print(flag_table_markdown())
        return 0
    if args.command == "sweep":
        from sb3_klppo.sweep import run_sweep_command

        return run_sweep_command(args)
    try:
        config = config_from_args(args)
        summary = train(config)
    except (ValueError, gym.error.Error, OSError) as error:
        print(f"sb3-klppo: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {summary.output_dir / 'report.md'} (total {summary.timings['total']:.0f} s)")
    return 0


# ---------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------


def preflight(config: TrainConfig) -> None:
    """Catch the errors that would otherwise surface only after training: names and paths."""
    if config.resume and not pathlib.Path(config.resume).is_file():
        raise ConfigError(f"resume: no saved model at {config.resume}")
    if config.warm_start.enabled and not config.resume:
        make_expert(config.warm_start.expert, config.seed)
    if config.evaluation.enabled:
        if config.env.id.rpartition(":")[2] != VIDUR_ENV_NAME:
            raise ConfigError(f"evaluation: the harness runs {VIDUR_ENV_NAME} only, not env.id {config.env.id!r}; "
                              "use --no-evaluate")
        from vidur_env.evaluation import check_router_names

        try:
            check_router_names(evaluation_routers(config))
        except ValueError as error:
            raise ConfigError(f"evaluation.routers: {error}") from None


def make_vec_env(config: TrainConfig, seed: int) -> VecEnv:
    """``n_envs`` Monitor-wrapped copies of the configured env in a DummyVecEnv, seeded from ``seed``,
    under a reward-only VecNormalize when ``ppo.normalize_reward`` is set.

    Monitor sits inside the normaliser, so logged episode returns stay in the env's units.
    """
    env_id, kwargs = config.env.id, config.env.kwargs

    def factory() -> gym.Env:
        return Monitor(gym.make(env_id, **kwargs))

    try:
        venv: VecEnv = DummyVecEnv([factory] * config.ppo.n_envs)
    except (ImportError, gym.error.Error) as error:
        raise ConfigError(f"env.id {env_id!r}: {error}") from None
    except TypeError as error:
        raise ConfigError(f"env.kwargs: {error}") from None
    venv.seed(seed)
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
    return {**ppo, **kl}


def build_model(config: TrainConfig, venv: VecEnv) -> KLPPO:
    """A fresh KLPPO, or the ``resume`` model with the config's hyperparameters and its own schedule step."""
    if config.resume:
        model = KLPPO.load(config.resume, env=venv, device="cpu", **klppo_kwargs(config))
        model.set_random_seed(config.seed)
        return model
    try:
        return KLPPO(
            config.ppo.policy,
            venv,
            policy_kwargs=config.ppo.policy_kwargs or None,
            seed=config.seed,
            device="cpu",
            verbose=config.monitoring.verbose,
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


def warm_start(config: TrainConfig, model: KLPPO, venv: VecEnv) -> BCReport:
    """Clone the expert on a separate env copy, then freeze the clone as the KL reference.

    The copy's reward statistics (gathered while the expert drove it) seed the training env's,
    so PPO starts with rewards on the scale the critic was fitted to.
    """
    ws = config.warm_start
    expert = make_expert(ws.expert, config.seed)
    bc_env = make_vec_env(config, seed=config.seed + 10_000)
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
        progress_bar=config.monitoring.progress_bar,
    )
    if isinstance(venv, VecNormalize) and isinstance(bc_env, VecNormalize):
        venv.ret_rms = copy.deepcopy(bc_env.ret_rms)
    bc_env.close()
    model.set_reference_policy()
    return bc_report


class RolloutRecorder(BaseCallback):
    """The learning curve: mean reward per step of each rollout and the recent episode return.

    Rewards are taken before any normalisation (env units). Episodes can be longer than a
    rollout, so SB3's ``rollout/ep_rew_mean`` may be empty for a while; the per-step mean
    exists from the first rollout.
    """

    def __init__(self) -> None:
        super().__init__()
        self.history: list[dict[str, float]] = []
        self._reward_sum, self._reward_count = 0.0, 0

    def _on_rollout_start(self) -> None:
        self._reward_sum, self._reward_count = 0.0, 0

    def _on_step(self) -> bool:
        env = self.model.get_env()
        rewards = env.get_original_reward() if isinstance(env, VecNormalize) else self.locals["rewards"]
        self._reward_sum += float(np.sum(rewards))
        self._reward_count += len(rewards)
        return True

    def _on_rollout_end(self) -> None:
        mean_reward = self._reward_sum / max(self._reward_count, 1)
        episodes = [info["r"] for info in self.model.ep_info_buffer]
        self.logger.record("rollout/mean_reward", mean_reward)
        self.history.append({
            "timesteps": float(self.num_timesteps),
            "mean_reward": mean_reward,
            "ep_rew_mean": float(np.mean(episodes)) if episodes else float("nan"),
        })


class UpdateRecorder(UpdateEndCallback):
    """Every update's figures (approx_kl, ref_kl, ref_kl_coef, entropy, ...) in memory, for the plots."""

    def __init__(self) -> None:
        super().__init__()
        self.history: list[dict[str, float]] = []

    def _on_update_end(self, stats: dict[str, float]) -> None:
        self.history.append({**stats, "timesteps": float(self.model.num_timesteps)})


@dataclasses.dataclass
class TrainingCallbacks:
    """The callbacks of one run; the recorders feed the report."""

    rollouts: RolloutRecorder
    updates: UpdateRecorder
    target_kl: TargetKLMonitor | None
    others: list[BaseCallback]

    def as_list(self) -> list[BaseCallback]:
        monitor = [self.target_kl] if self.target_kl else []
        return [self.rollouts, self.updates, *monitor, *self.others]


def make_callbacks(config: TrainConfig, out: pathlib.Path) -> TrainingCallbacks:
    """Recorders, the target-KL monitor, the KL CSV, the schedule log and optional checkpoints."""
    mon, target = config.monitoring, config.kl_regularization.target_kl
    monitor = TargetKLMonitor(target, action=mon.target_kl_action, patience=mon.target_kl_patience) if target else None
    others: list[BaseCallback] = [RefKLScheduleLogger()]
    if mon.csv:
        others.append(KLStatsCSVCallback(out / "kl_stats.csv"))
    if mon.checkpoint_freq:
        others.append(CheckpointCallback(mon.checkpoint_freq, str(out / "checkpoints"), name_prefix="model",
                                         save_vecnormalize=True))
    return TrainingCallbacks(RolloutRecorder(), UpdateRecorder(), monitor, others)


def evaluation_routers(config: TrainConfig) -> list[str]:
    """The configured heuristics plus the warm-start teacher, each once, in order."""
    routers = list(config.evaluation.routers)
    if config.warm_start.enabled and config.warm_start.expert not in routers:
        routers.append(config.warm_start.expert)
    return routers


def evaluate_model(config: TrainConfig, model: BaseAlgorithm):
    """The trained model and the heuristics on the same workloads, with vidur_env's harness."""
    from vidur_env.evaluation import evaluate

    ev = config.evaluation
    env_kwargs = dict(config.env.kwargs)
    if ev.num_requests is not None:
        env_kwargs[EVAL_REQUESTS_KWARG] = ev.num_requests
    return evaluate(env_kwargs, evaluation_routers(config), model=model, model_name=report.MODEL_NAME,
                    episodes=ev.episodes, seed=ev.seed, deterministic=True)


@dataclasses.dataclass
class RunSummary:
    """What the report is written from."""

    config: TrainConfig
    output_dir: pathlib.Path
    timings: dict[str, float]
    bc_report: BCReport | None
    callbacks: TrainingCallbacks
    model: KLPPO
    evaluation: Any = None
    notes: list[str] = dataclasses.field(default_factory=list)


def train(config: TrainConfig) -> RunSummary:
    """Run the whole job for ``config``; every artifact lands in ``config.output_dir``."""
    preflight(config)
    start = time.perf_counter()
    th.set_num_threads(config.torch_threads)
    timings: dict[str, float] = {}
    out = pathlib.Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config_used.json")
    notes: list[str] = []

    # Environment and model
    venv = make_vec_env(config, seed=config.seed)
    model = build_model(config, venv)
    formats = ["stdout", *(["csv"] if config.monitoring.csv else []), *(["tensorboard"] if config.monitoring.tensorboard else [])]
    model.set_logger(configure(str(out), formats))

    # Warm start: behaviour cloning of the expert, the clone becomes the reference
    bc_report = None
    if config.resume:
        if restore_reward_normalizer(venv, config.resume):
            notes.append(f"Reward normaliser restored from {reward_normalizer_path(config.resume)}.")
        notes.append(f"Resumed from {config.resume} at gradient step {model.kl_schedule_step} "
                     f"({model.num_timesteps} env steps); no warm start.")
    elif config.warm_start.enabled:
        phase = time.perf_counter()
        bc_report = warm_start(config, model, venv)
        timings["warm_start"] = time.perf_counter() - phase

    # KL-regularised PPO
    callbacks = make_callbacks(config, out)
    phase = time.perf_counter()
    model.learn(
        config.ppo.total_timesteps,
        callback=callbacks.as_list(),
        log_interval=config.monitoring.log_interval,
        progress_bar=config.monitoring.progress_bar,
        reset_num_timesteps=not config.resume,
    )
    timings["training"] = time.perf_counter() - phase
    model.save(out / "model.zip")
    if isinstance(venv, VecNormalize):
        venv.save(str(reward_normalizer_path(out / "model.zip")))
    venv.close()

    # Evaluation against the heuristics
    summary = RunSummary(config, out, timings, bc_report, callbacks, model, notes=notes)
    if config.evaluation.enabled:
        phase = time.perf_counter()
        summary.evaluation = evaluate_model(config, model)
        timings["evaluation"] = time.perf_counter() - phase

    timings["total"] = time.perf_counter() - start
    report.write_report(summary)
    return summary
