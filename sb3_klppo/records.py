"""What a training run records for its report: the recorders of rollouts and updates, the
learning curve, and the run's summary. The pipeline (:mod:`sb3_klppo.pipeline`) fills them; the report
(:mod:`sb3_klppo.report`) reads them; neither module imports the other's internals.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecNormalize

from sb3_klppo.behaviour_cloning import BCReport
from sb3_klppo.callbacks import PeriodicEvaluation, TargetKLMonitor, UpdateEndCallback
from sb3_klppo.config import TrainConfig
from sb3_klppo.klppo import KLPPO


class RolloutRecorder(BaseCallback):
    """Mean reward per step of each rollout and the recent episode return (in ``summary.json``).

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
    """The callbacks of one run; the recorders and the curve feed the report."""

    rollouts: RolloutRecorder
    updates: UpdateRecorder
    target_kl: TargetKLMonitor | None
    curve: PeriodicEvaluation | None
    others: list[BaseCallback]

    def as_list(self) -> list[BaseCallback]:
        optional = [callback for callback in (self.target_kl, self.curve) if callback is not None]
        return [self.rollouts, self.updates, *optional, *self.others]


@dataclasses.dataclass
class LearningCurve:
    """The fixed-seed evaluations of the policy during training, the teacher's level on the same
    seeds (None without a reference router) and, with ``monitoring.keep_best``, the index of
    the point whose policy the run kept."""

    points: list[dict[str, float]]
    reference_name: str | None
    reference: dict[str, float] | None
    seeds: list[int]
    kept: int | None = None


@dataclasses.dataclass
class RunSummary:
    """What the report is written from."""

    config: TrainConfig
    output_dir: pathlib.Path
    timings: dict[str, float]
    bc_report: BCReport | None
    callbacks: TrainingCallbacks
    model: KLPPO
    env_seed: int
    curve: LearningCurve | None = None
    evaluation: Any = None
    notes: list[str] = dataclasses.field(default_factory=list)
