"""An input-driven baseline for PPO: envs in a group replay the same arrivals, and each advantage
is taken relative to the other members' at the same step.

In a routing env the arrivals are exogenous: one episode's workload draw can cost ten times
another's whatever the router does, and a state-only value function cannot tell a heavy draw
from a bad decision until the queue shows it. Mao et al. (*Variance Reduction for Reinforcement
Learning in Input-Driven Environments*, ICLR 2019, https://arxiv.org/abs/1807.02264) remove that
variance by conditioning the baseline on the input sequence. Here the conditioning is done by
replay: every ``group_size`` consecutive envs of the vectorised env are seeded alike
(:class:`SharedWorkloadSeed`), so step ``t`` of every member routes the same request of the
same workload, and :class:`InputDrivenRolloutBuffer` subtracts from each GAE advantage the mean
advantage of the *other* members at step ``t``. The other members' actions are sampled
independently of this member's, so the correction does not depend on its action: the policy
gradient stays unbiased while the part of the return the arrivals decide cancels.

Alignment holds because an episode is a fixed number of decisions (one per request) and all
members start together; it needs the env to draw its workloads from its own seeded generator
only (``VidurRoutingEnv`` does, including its training-traffic draws).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.buffers import RolloutBuffer

from sb3_klppo.errors import ConfigError


def check_group_size(group_size: int, n_envs: int) -> None:
    """A group size must be a positive divisor of the env count (1 turns the baseline off)."""
    if not isinstance(group_size, int) or group_size < 1 or n_envs % group_size:
        raise ConfigError(f"ppo.baseline_group: must be a positive divisor of ppo.n_envs ({n_envs}), "
                          f"got {group_size!r}")


def input_driven_advantages(advantages: np.ndarray, group_size: int) -> np.ndarray:
    """``(steps, envs)`` advantages minus, per step, the mean of the other members of each group
    of ``group_size`` consecutive envs: ``A_i - mean_{j != i} A_j``. A group of 1 is returned
    unchanged."""
    if group_size == 1:
        return advantages
    steps, envs = advantages.shape
    grouped = advantages.reshape(steps, envs // group_size, group_size)
    others = (grouped.sum(axis=2, keepdims=True) - grouped) / (group_size - 1)
    return (grouped - others).reshape(steps, envs)


class InputDrivenRolloutBuffer(RolloutBuffer):
    """SB3's rollout buffer with the input-driven correction applied to its GAE advantages.

    The returns (the value function's targets) stay SB3's lambda-returns; only the advantages
    the policy loss reads change. Pass it as ``rollout_buffer_class`` with
    ``rollout_buffer_kwargs={"group_size": k}`` to an algorithm whose envs are grouped by
    :class:`SharedWorkloadSeed`.

    :param group_size: consecutive envs that share a workload; must divide the env count.
    """

    def __init__(self, *args: Any, group_size: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_group_size(group_size, self.n_envs)
        self.group_size = group_size

    def compute_returns_and_advantage(self, last_values: th.Tensor, dones: np.ndarray) -> None:
        super().compute_returns_and_advantage(last_values, dones)
        self.advantages = input_driven_advantages(self.advantages, self.group_size)


class SharedWorkloadSeed(gym.Wrapper):
    """Maps the seed SB3's vectorised env gives env ``i`` (``seed + i``) to its group's seed
    (``seed + i - i % group_size``), so that the members of a group draw the same workloads.

    :param member: this env's place in its group, ``i % group_size``.
    """

    def __init__(self, env: gym.Env, member: int) -> None:
        super().__init__(env)
        self.member = member

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        return self.env.reset(seed=None if seed is None else seed - self.member, options=options)
