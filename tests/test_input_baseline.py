"""The input-driven baseline: grouped envs replay the same workloads, and the advantage correction."""
from __future__ import annotations

import numpy as np
import pytest

from sb3_klppo.config import ConfigError
from sb3_klppo.input_baseline import input_driven_advantages
from sb3_klppo.klppo import KLPPO
from sb3_klppo.pipeline import make_vec_env, resolve_config

SMALL_ENV = {"num_replicas": 2, "num_requests": 24}


def test_advantages_lose_the_other_members_mean_at_each_step():
    advantages = np.array([[1.0, 2.0, 6.0, 10.0, 20.0, 30.0],
                           [0.0, 3.0, 3.0, -1.0, 1.0, 0.0]])
    corrected = input_driven_advantages(advantages, 3)
    # step 0, group (1, 2, 6): 1 - mean(2, 6) = -3, 2 - mean(1, 6) = -1.5, 6 - mean(1, 2) = 4.5
    np.testing.assert_allclose(corrected, [[-3.0, -1.5, 4.5, -15.0, 0.0, 15.0],
                                           [-3.0, 1.5, 1.5, -1.5, 1.5, 0.0]])
    assert input_driven_advantages(advantages, 1) is advantages


def test_a_shared_component_of_the_advantages_cancels():
    rng = np.random.default_rng(0)
    own = rng.normal(size=(64, 8))
    shared = np.repeat(rng.normal(scale=100.0, size=(64, 2)), 4, axis=1)  # what the arrivals decide
    np.testing.assert_allclose(input_driven_advantages(own + shared, 4), input_driven_advantages(own, 4))


def grouped_requests(group_size: int, episodes: int) -> list[list[tuple]]:
    """Per episode, each env's (prompt, arrival) pairs, with every env taking different actions."""
    config = resolve_config(None, {"env.kwargs": SMALL_ENV, "ppo.n_envs": 4, "ppo.normalize_reward": False})
    venv = make_vec_env(config, seed=7, group_size=group_size)
    venv.reset()
    seen: list[list[tuple]] = []
    for _ in range(episodes):
        envs = [env.unwrapped for env in venv.envs]
        seen.append([(tuple(env.requests.num_prefill_tokens), tuple(env.requests.arrived_at)) for env in envs])
        for step in range(SMALL_ENV["num_requests"]):
            venv.step(np.array([(step + i) % 2 for i in range(4)]))  # members act differently
    return seen


def test_members_of_a_group_replay_the_same_workloads_whatever_they_do():
    for episode in grouped_requests(group_size=2, episodes=3):
        assert episode[0] == episode[1] and episode[2] == episode[3]
        assert episode[0] != episode[2]
    for episode in grouped_requests(group_size=1, episodes=1):
        assert len(set(episode)) == 4


def test_group_size_must_divide_the_env_count():
    config = resolve_config(None, {"env.kwargs": SMALL_ENV, "ppo.n_envs": 4, "ppo.baseline_group": 3})
    with pytest.raises(ConfigError, match=r"ppo.baseline_group: must be a positive divisor of ppo.n_envs \(4\), got 3"):
        make_vec_env(config, seed=0, group_size=config.ppo.baseline_group)


def test_klppo_trains_with_the_grouped_buffer():
    from sb3_klppo.pipeline import klppo_kwargs

    config = resolve_config(None, {"env.kwargs": SMALL_ENV, "ppo.n_envs": 4, "ppo.baseline_group": 2,
                                   "ppo.n_steps": 24, "ppo.batch_size": 48, "ppo.normalize_reward": False})
    venv = make_vec_env(config, seed=0, group_size=2)
    model = KLPPO("ReplicaSetPolicy", venv, seed=0, device="cpu", **klppo_kwargs(config))
    model.learn(96)
    buffer = model.rollout_buffer
    assert buffer.group_size == 2
    # the advantages of the last rollout (flattened env by env for the minibatches) sum to zero
    # within each group at every step
    per_step = buffer.advantages.reshape(4, 24).T
    np.testing.assert_allclose(per_step.reshape(24, 2, 2).sum(axis=2), 0.0, atol=1e-5)
    assert np.abs(per_step).max() > 1e-3
