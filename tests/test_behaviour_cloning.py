"""Behaviour cloning: imitation of simple experts on identity envs, value fitting, input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import IdentityEnv, IdentityEnvBox, IdentityEnvMultiDiscrete

from sb3_klppo import KLPPO, behaviour_clone
from sb3_klppo.behaviour_cloning import (
    BehaviourCloningError,
    _discounted_returns,
    collect_expert_data,
    per_observation_expert,
)
from sb3_klppo.klppo import reference_kl


def model_for(env, **kwargs) -> KLPPO:
    return KLPPO("MlpPolicy", env, n_steps=64, batch_size=64, seed=0, device="cpu", **kwargs)


def identity(observations: np.ndarray) -> np.ndarray:
    return observations


class PredictExpert:
    """An SB3-style expert: copies the observation; records the flags it was called with."""

    def __init__(self):
        self.calls = []

    def predict(self, observation, state=None, episode_start=None, deterministic=False):
        self.calls.append((state, deterministic))
        return observation, state


def test_bc_of_a_discrete_identity_expert_reaches_95_percent_agreement():
    model = model_for(IdentityEnv(8))
    before = model.policy.predict(np.arange(8), deterministic=True)[0]
    report = behaviour_clone(model, IdentityEnv(8), identity, n_samples=2000, epochs=10, batch_size=64, seed=1)
    assert report.val_accuracy > 0.95 and report.train_accuracy > 0.95
    assert (report.n_samples, report.n_train, report.n_val) == (2000, 1800, 200)
    assert report.val_log_likelihood > np.log(0.5)
    assert report.epoch_losses[-1] < report.epoch_losses[0]
    assert (model.policy.predict(np.arange(8), deterministic=True)[0] == np.arange(8)).all()
    assert not (before == np.arange(8)).all()  # it was learnt, not given


def test_bc_with_an_sb3_style_expert_on_multidiscrete_actions():
    expert = PredictExpert()
    env = make_vec_env(lambda: IdentityEnvMultiDiscrete(3), n_envs=2)
    model = model_for(env)
    report = behaviour_clone(model, env, expert, n_samples=1000, epochs=15, batch_size=50, seed=0)
    assert report.val_accuracy > 0.95
    assert all(deterministic is True for _, deterministic in expert.calls)


def test_bc_on_box_actions_reports_action_error():
    model = model_for(IdentityEnvBox(ep_length=50))
    report = behaviour_clone(model, IdentityEnvBox(ep_length=50), identity, n_samples=1000, epochs=20, batch_size=50)
    assert report.val_accuracy is None and report.train_accuracy is None
    assert report.val_action_mse < 0.01  # the actions are uniform on [-1, 1]: variance 1/3


def test_bc_fits_the_critic_on_returns_when_asked():
    model = model_for(IdentityEnv(4), gamma=0.5)
    report = behaviour_clone(model, IdentityEnv(4), identity, n_samples=1000, epochs=20, batch_size=50, fit_value=True)
    assert report.value_mse < 0.05  # returns are ~2 (reward 1 per step, gamma 0.5)
    assert behaviour_clone(model, IdentityEnv(4), identity, n_samples=100, epochs=1).value_mse is None


def test_cloned_policy_becomes_the_reference():
    model = model_for(IdentityEnv(4))
    behaviour_clone(model, IdentityEnv(4), identity, n_samples=500, epochs=5, batch_size=50)
    model.set_reference_policy()
    obs = th.arange(4)
    with th.no_grad():
        kl = reference_kl(model.policy.get_distribution(obs), model.reference_policy.get_distribution(obs)).item()
    assert kl == pytest.approx(0.0, abs=1e-7)


def test_collection_records_time_major_pairs_and_returns():
    env = make_vec_env(lambda: IdentityEnv(5, ep_length=3), n_envs=2, seed=0)
    data = collect_expert_data(env, identity, n_samples=5, seed=3, gamma=0.5)
    assert data.observations.shape == (5,) and data.actions.shape == (5,)
    assert (data.actions == data.observations).all()
    # Episodes of 3 steps, reward 1 each: returns 1.75, 1.5, 1 per episode (time-major, 2 envs).
    assert data.returns.tolist() == [1.75, 1.75, 1.5, 1.5, 1.0]


def test_discounted_returns_restart_after_done():
    rewards = np.array([[1.0], [2.0], [3.0], [4.0]], dtype=np.float32)
    dones = np.array([[0.0], [1.0], [0.0], [0.0]], dtype=np.float32)
    assert _discounted_returns(rewards, dones, 0.5)[:, 0].tolist() == [2.0, 2.0, 5.0, 4.0]


def test_per_observation_expert_batches_a_single_observation_function():
    batched = per_observation_expert(lambda obs: int(obs) % 3)
    assert batched(np.array([4, 5, 6])).tolist() == [1, 2, 0]


def test_bad_inputs_are_named():
    model = model_for(IdentityEnv(4))
    with pytest.raises(BehaviourCloningError, match="shape"):
        behaviour_clone(model, IdentityEnv(4), lambda obs: np.zeros((2, 2)), n_samples=10)
    with pytest.raises(BehaviourCloningError, match="outside"):
        behaviour_clone(model, IdentityEnv(4), lambda obs: obs + 4, n_samples=10)
    with pytest.raises(BehaviourCloningError, match="does not match"):
        behaviour_clone(model, IdentityEnvMultiDiscrete(4), identity, n_samples=10)
    with pytest.raises(BehaviourCloningError, match="val_fraction"):
        behaviour_clone(model, IdentityEnv(4), identity, n_samples=10, val_fraction=1.0)
    with pytest.raises(BehaviourCloningError, match="expert"):
        behaviour_clone(model, IdentityEnv(4), "expert", n_samples=10)
    with pytest.raises(BehaviourCloningError, match="ActorCriticPolicy"):
        from stable_baselines3 import DQN

        behaviour_clone(DQN("MlpPolicy", IdentityEnv(4), device="cpu"), IdentityEnv(4), identity, n_samples=10)


def test_an_sb3_model_can_be_the_expert():
    teacher = PPO("MlpPolicy", IdentityEnv(4), n_steps=64, batch_size=64, seed=2, device="cpu")
    student = model_for(IdentityEnv(4))
    report = behaviour_clone(student, IdentityEnv(4), teacher, n_samples=800, epochs=10, batch_size=50)
    obs = np.arange(4)
    agreement = (student.predict(obs, deterministic=True)[0] == teacher.predict(obs, deterministic=True)[0]).mean()
    assert report.val_accuracy > 0.95 and agreement == 1.0
