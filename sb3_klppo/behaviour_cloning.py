"""Warm start by behaviour cloning: pretrain an SB3 actor-critic policy on an expert's actions.

Typical use::

    report = behaviour_clone(model, make_env(), expert, n_samples=20_000)
    model.set_reference_policy()  # KLPPO: keep the cloned policy as the KL reference

The expert drives the environment (its own state distribution; no DAgger-style relabelling), the
policy's actor is trained by maximum likelihood of the expert's actions with the policy's own
``evaluate_actions`` (cross-entropy for Discrete actions), optionally the critic on discounted
Monte-Carlo returns, and a held-out split measures imitation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv
from torch.nn import functional as F
from tqdm.auto import tqdm

from sb3_klppo.errors import ConfigError


class BehaviourCloningError(ConfigError):
    """Invalid behaviour-cloning input; the message names the offending argument."""


@runtime_checkable
class PredictingExpert(Protocol):
    """An SB3-style expert: any object with SB3's ``predict`` signature (models, policies, ...)."""

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]: ...


# A callable expert maps a *batch* of observations, shape (n_envs, *obs_shape), to a batch of
# actions, shape (n_envs, *action_shape). Wrap a one-observation function with per_observation_expert.
Expert = Callable[[np.ndarray], Any] | PredictingExpert


@dataclass(frozen=True)
class ExpertDataset:
    """Expert transitions in time-major order (step t of every env, then step t + 1).

    ``returns`` are discounted Monte-Carlo returns that stop at episode ends (terminated or
    truncated, without bootstrapping) and at the end of the collection.
    """

    observations: np.ndarray
    actions: np.ndarray
    returns: np.ndarray

    def __len__(self) -> int:
        return len(self.actions)


@dataclass(frozen=True)
class BCReport:
    """Outcome of :func:`behaviour_clone`; ``None`` marks a figure that does not apply.

    Accuracies are the fraction of states where the policy's most likely action equals the
    expert's (all components for MultiDiscrete / MultiBinary); Box actions get the mean squared
    error of the policy's mean action instead. Log-likelihoods are per sample, in nats.
    """

    n_samples: int
    n_train: int
    n_val: int
    epochs: int
    train_log_likelihood: float
    val_log_likelihood: float | None
    train_accuracy: float | None
    val_accuracy: float | None
    train_action_mse: float | None
    val_action_mse: float | None
    value_mse: float | None
    epoch_losses: list[float] = field(default_factory=list)


def per_observation_expert(act: Callable[[np.ndarray], Any]) -> Callable[[np.ndarray], np.ndarray]:
    """Turn an expert that acts on one observation into the batched callable this module expects."""

    def batched(observations: np.ndarray) -> np.ndarray:
        return np.stack([np.asarray(act(observation)) for observation in observations])

    return batched


def _as_vec_env(env: gym.Env | VecEnv) -> VecEnv:
    """Collect through a VecEnv in every case, so observations and actions are always batched."""
    return env if isinstance(env, VecEnv) else DummyVecEnv([lambda: env])


def _query_expert(
    expert: Expert,
    observations: np.ndarray,
    state: tuple[np.ndarray, ...] | None,
    episode_start: np.ndarray,
    deterministic: bool,
) -> tuple[Any, tuple[np.ndarray, ...] | None]:
    """Ask the expert for one batch of actions; SB3-style experts keep their recurrent state."""
    if isinstance(expert, PredictingExpert):
        return expert.predict(observations, state=state, episode_start=episode_start, deterministic=deterministic)
    if callable(expert):
        return expert(observations), None
    raise BehaviourCloningError(
        f"expert must be a callable or have SB3's predict(), got {type(expert).__name__}"
    )


def _as_action_batch(actions: Any, action_space: spaces.Space, n_envs: int) -> np.ndarray:
    """Shape the expert's answer as ``(n_envs, *action_shape)`` and check it fits the action space."""
    array = np.asarray(actions)
    shape = (n_envs, *action_space.shape)
    if array.size != math.prod(shape):
        raise BehaviourCloningError(
            f"expert returned actions of shape {array.shape}; expected {shape} for {action_space}"
        )
    array = array.reshape(shape)
    if isinstance(action_space, spaces.Box):
        return array.astype(np.float32)
    if not np.all(np.equal(np.mod(array, 1), 0)):
        raise BehaviourCloningError(f"expert returned non-integer actions for {action_space}")
    array = array.astype(np.int64)
    # SB3's categorical distributions index actions from 0.
    if isinstance(action_space, spaces.Discrete):
        high = action_space.n
    elif isinstance(action_space, spaces.MultiDiscrete):
        high = action_space.nvec
    elif isinstance(action_space, spaces.MultiBinary):
        high = 2
    else:
        raise BehaviourCloningError(f"behaviour cloning does not support action space {action_space}")
    if np.any(array < 0) or np.any(array >= high):
        raise BehaviourCloningError(f"expert returned actions outside {action_space}: {array.tolist()}")
    return array


def _discounted_returns(rewards: np.ndarray, dones: np.ndarray, gamma: float) -> np.ndarray:
    """Per-env discounted returns of ``(n_steps, n_envs)`` rewards, restarting after each done."""
    returns = np.zeros_like(rewards, dtype=np.float32)
    running = np.zeros(rewards.shape[1], dtype=np.float32)
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running * (1.0 - dones[t])
        returns[t] = running
    return returns


def collect_expert_data(
    env: gym.Env | VecEnv,
    expert: Expert,
    n_samples: int,
    seed: int | None = None,
    gamma: float = 0.99,
    deterministic: bool = True,
) -> ExpertDataset:
    """Run ``expert`` on ``env`` and record ``n_samples`` (observation, expert action) pairs.

    :param env: A Gymnasium env or an SB3 VecEnv (stepped in place; pass a copy of the training env).
    :param expert: A callable from a batch of observations ``(n_envs, *obs_shape)`` to a batch of
        actions, or an object with SB3's ``predict`` (an SB3 model or policy).
    :param n_samples: Number of pairs to keep (the env runs ``ceil(n_samples / n_envs)`` steps).
    :param seed: Seed of the env's resets; None leaves the env's seeding alone.
    :param gamma: Discount factor of the Monte-Carlo returns.
    :param deterministic: Passed to ``predict`` of SB3-style experts.
    """
    if n_samples < 1:
        raise BehaviourCloningError(f"n_samples must be >= 1, got {n_samples!r}")
    venv = _as_vec_env(env)
    if isinstance(venv.observation_space, (spaces.Dict, spaces.Tuple)):
        raise BehaviourCloningError(f"behaviour cloning supports array observations, not {venv.observation_space}")
    if seed is not None:
        venv.seed(seed)
    observations = venv.reset()
    episode_start = np.ones(venv.num_envs, dtype=bool)
    state = None
    obs_steps, action_steps, reward_steps, done_steps = [], [], [], []
    for _ in range(math.ceil(n_samples / venv.num_envs)):
        raw_actions, state = _query_expert(expert, observations, state, episode_start, deterministic)
        actions = _as_action_batch(raw_actions, venv.action_space, venv.num_envs)
        obs_steps.append(np.array(observations))
        action_steps.append(actions)
        observations, rewards, dones, _ = venv.step(actions)
        reward_steps.append(np.asarray(rewards, dtype=np.float32))
        done_steps.append(np.asarray(dones, dtype=np.float32))
        episode_start = np.asarray(dones, dtype=bool)
    returns = _discounted_returns(np.stack(reward_steps), np.stack(done_steps), gamma)

    def flat(steps: np.ndarray) -> np.ndarray:
        return steps.reshape(-1, *steps.shape[2:])[:n_samples]

    return ExpertDataset(flat(np.stack(obs_steps)), flat(np.stack(action_steps)), flat(returns))


def _split(n: int, val_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random (train, validation) index split; validation gets ``round(val_fraction * n)`` samples."""
    if not 0.0 <= val_fraction < 1.0:
        raise BehaviourCloningError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    order = rng.permutation(n)
    n_val = int(round(val_fraction * n))
    if n - n_val < 1:
        raise BehaviourCloningError(f"no training samples left: n_samples={n}, val_fraction={val_fraction}")
    return order[n_val:], order[:n_val]


@dataclass(frozen=True)
class _Tensors:
    """The dataset on the policy's device, actions in the layout ``evaluate_actions`` expects."""

    observations: th.Tensor
    actions: th.Tensor
    returns: th.Tensor

    @classmethod
    def from_dataset(cls, dataset: ExpertDataset, policy: ActorCriticPolicy) -> _Tensors:
        actions = th.as_tensor(dataset.actions, device=policy.device)
        # Same conversion as PPO.train: long and flat for Discrete, float otherwise.
        actions = actions.long().flatten() if isinstance(policy.action_space, spaces.Discrete) else actions.float()
        return cls(
            th.as_tensor(dataset.observations, device=policy.device),
            actions,
            th.as_tensor(dataset.returns, device=policy.device, dtype=th.float32),
        )


def _batch_loss(policy: ActorCriticPolicy, data: _Tensors, idx: np.ndarray, value_coef: float | None) -> th.Tensor:
    """Negative log-likelihood of the expert's actions, plus the value regression when asked."""
    values, log_prob, _ = policy.evaluate_actions(data.observations[idx], data.actions[idx])
    loss = -log_prob.mean()
    if value_coef is not None:
        loss = loss + value_coef * F.mse_loss(values.flatten(), data.returns[idx])
    return loss


def _evaluate(
    policy: ActorCriticPolicy, data: _Tensors, idx: np.ndarray, batch_size: int
) -> dict[str, float | None]:
    """Mean log-likelihood, agreement (discrete) or action MSE (Box), and value MSE on ``idx``."""
    log_lik, agree, sq_err, value_err = [], [], [], []
    with th.no_grad():
        for start in range(0, len(idx), batch_size):
            batch = idx[start : start + batch_size]
            obs, actions = data.observations[batch], data.actions[batch]
            values, log_prob, _ = policy.evaluate_actions(obs, actions)
            mode = policy.get_distribution(obs).mode()
            log_lik.append(log_prob)
            value_err.append((values.flatten() - data.returns[batch]) ** 2)
            if isinstance(policy.action_space, spaces.Box):
                sq_err.append(((mode - actions) ** 2).reshape(len(batch), -1).mean(dim=1))
            else:
                agree.append((mode.reshape(len(batch), -1) == actions.reshape(len(batch), -1)).all(dim=1).float())
    return {
        "log_likelihood": th.cat(log_lik).mean().item(),
        "accuracy": th.cat(agree).mean().item() if agree else None,
        "action_mse": th.cat(sq_err).mean().item() if sq_err else None,
        "value_mse": th.cat(value_err).mean().item(),
    }


def _fit(
    policy: ActorCriticPolicy,
    data: _Tensors,
    train_idx: np.ndarray,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    value_coef: float | None,
    rng: np.random.Generator,
    progress_bar: bool = False,
) -> list[float]:
    """Fit ``policy`` on ``data[train_idx]`` with Adam; returns the mean loss of each epoch.

    A fresh optimizer is used so PPO's own Adam state is untouched. Only parameters on the loss's
    path move: the actor (features extractor, policy part of the MLP, action net, log_std) and,
    with ``value_coef``, the critic.
    """
    optimizer = th.optim.Adam(policy.parameters(), lr=learning_rate)
    policy.set_training_mode(True)
    epoch_losses = []
    for _ in tqdm(range(epochs), desc="behaviour cloning", disable=not progress_bar):
        order = rng.permutation(train_idx)
        losses = []
        for start in range(0, len(order), batch_size):
            loss = _batch_loss(policy, data, order[start : start + batch_size], value_coef)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        epoch_losses.append(float(np.mean(losses)))
    policy.set_training_mode(False)
    return epoch_losses


def behaviour_clone(
    model: BaseAlgorithm,
    env: gym.Env | VecEnv,
    expert: Expert,
    n_samples: int = 10_000,
    epochs: int = 10,
    batch_size: int = 256,
    val_fraction: float = 0.1,
    seed: int = 0,
    fit_value: bool = False,
    learning_rate: float = 1e-3,
    value_coef: float = 0.5,
    expert_deterministic: bool = True,
    progress_bar: bool = False,
) -> BCReport:
    """Pretrain ``model.policy`` to imitate ``expert`` on ``env``; the policy is updated in place.

    :param model: An SB3 on-policy model (PPO, KLPPO, ...) whose actor-critic policy is trained.
    :param env: A Gymnasium env or VecEnv with the model's spaces, stepped by the expert.
    :param expert: A callable from a batch of observations to a batch of actions (see
        :func:`per_observation_expert` for single-observation functions) or an object with SB3's
        ``predict`` (e.g. another SB3 model).
    :param n_samples: Number of (observation, action) pairs to collect.
    :param epochs: Passes over the training split.
    :param batch_size: Minibatch size of the gradient steps.
    :param val_fraction: Share of the pairs held out to measure imitation, in [0, 1).
    :param seed: Seeds the env's resets, the split and the minibatch order.
    :param fit_value: Also regress the critic on discounted Monte-Carlo returns (``model.gamma``).
    :param learning_rate: Adam learning rate of the cloning optimizer.
    :param value_coef: Weight of the value loss when ``fit_value`` is set.
    :param expert_deterministic: ``deterministic`` flag passed to SB3-style experts.
    :param progress_bar: Show a tqdm bar over epochs.
    :return: imitation figures on the training and validation splits.
    """
    policy = model.policy
    if not isinstance(policy, ActorCriticPolicy):
        raise BehaviourCloningError(f"model.policy must be an ActorCriticPolicy, got {type(policy).__name__}")
    for name, ours, theirs in (
        ("observation_space", policy.observation_space, env.observation_space),
        ("action_space", policy.action_space, env.action_space),
    ):
        if ours != theirs:
            raise BehaviourCloningError(f"env {name} {theirs} does not match the model's {ours}")
    if epochs < 1 or batch_size < 1:
        raise BehaviourCloningError(f"epochs and batch_size must be >= 1, got {epochs!r} and {batch_size!r}")

    rng = np.random.default_rng(seed)
    gamma = float(getattr(model, "gamma", 0.99))
    dataset = collect_expert_data(env, expert, n_samples, seed=seed, gamma=gamma, deterministic=expert_deterministic)
    train_idx, val_idx = _split(len(dataset), val_fraction, rng)
    data = _Tensors.from_dataset(dataset, policy)
    epoch_losses = _fit(
        policy,
        data,
        train_idx,
        epochs,
        batch_size,
        learning_rate,
        value_coef if fit_value else None,
        rng,
        progress_bar,
    )
    train = _evaluate(policy, data, train_idx, batch_size)
    val = _evaluate(policy, data, val_idx, batch_size) if len(val_idx) else None
    return BCReport(
        n_samples=len(dataset),
        n_train=len(train_idx),
        n_val=len(val_idx),
        epochs=epochs,
        train_log_likelihood=train["log_likelihood"],
        val_log_likelihood=val["log_likelihood"] if val else None,
        train_accuracy=train["accuracy"],
        val_accuracy=val["accuracy"] if val else None,
        train_action_mse=train["action_mse"],
        val_action_mse=val["action_mse"] if val else None,
        value_mse=train["value_mse"] if fit_value else None,
        epoch_losses=epoch_losses,
    )
