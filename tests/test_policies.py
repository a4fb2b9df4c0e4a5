"""ReplicaSetPolicy: permutation symmetry, any cluster size, SB3 save/load and behaviour cloning."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces

from sb3_klppo import KLPPO, behaviour_clone
from sb3_klppo.policies import ReplicaSetPolicy, ReplicaSetPolicyError

FAST = dict(n_steps=64, batch_size=32, n_epochs=2, seed=0, device="cpu")


class RowsEnv(gym.Env):
    """Random (N, F) rows; reward 1 for picking the row with the smallest first column."""

    def __init__(self, num_rows: int = 4, num_features: int = 5):
        self.observation_space = spaces.Box(0.0, 1.0, (num_rows, num_features), np.float32)
        self.action_space = spaces.Discrete(num_rows)

    def _observe(self) -> np.ndarray:
        self.obs = self.np_random.random(self.observation_space.shape, dtype=np.float32)
        return self.obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._observe(), {}

    def step(self, action):
        reward = float(int(action) == int(np.argmin(self.obs[:, 0])))
        return self._observe(), reward, False, False, {}


def smallest_first_column(observations: np.ndarray) -> np.ndarray:
    """The batched expert of RowsEnv."""
    return np.argmin(observations[:, :, 0], axis=1)


@pytest.fixture
def model() -> KLPPO:
    th.manual_seed(0)
    return KLPPO("ReplicaSetPolicy", RowsEnv(), **FAST)


def test_alias_builds_the_policy(model):
    assert isinstance(model.policy, ReplicaSetPolicy)


def test_permuting_rows_permutes_logits_and_keeps_the_value(model):
    policy = model.policy
    obs = th.rand(5, 4, 5)
    perm = th.tensor([2, 0, 3, 1])
    with th.no_grad():
        logits, permuted_logits = policy.row_logits(obs), policy.row_logits(obs[:, perm])
        value, permuted_value = policy.predict_values(obs), policy.predict_values(obs[:, perm])
    assert th.allclose(permuted_logits, logits[:, perm], atol=1e-6)
    assert th.allclose(permuted_value, value, atol=1e-6)
    assert not th.allclose(logits[:, 0], logits[:, 1])  # rows are really scored, not constant


def test_same_weights_serve_four_and_eight_rows(model):
    policy = model.policy
    four = th.rand(3, 4, 5)
    eight = th.cat([four, th.rand(3, 4, 5)], dim=1)
    with th.no_grad():
        logits4, logits8 = policy.row_logits(four), policy.row_logits(eight)
        dist8 = policy.get_distribution(eight)
        values8 = policy.predict_values(eight)
    assert logits4.shape == (3, 4) and logits8.shape == (3, 8)
    assert dist8.distribution.probs.shape == (3, 8)
    assert values8.shape == (3, 1)
    # Duplicating every row leaves mean and max pooling unchanged: the same value and, per row, the same logits.
    doubled = th.cat([four, four], dim=1)
    with th.no_grad():
        assert th.allclose(policy.predict_values(doubled), policy.predict_values(four), atol=1e-6)
        assert th.allclose(policy.row_logits(doubled)[:, :4], logits4, atol=1e-6)


def test_save_load_keeps_outputs_and_reference(model, tmp_path):
    model.set_reference_policy()
    model.learn(128)
    obs = th.rand(4, 4, 5)
    with th.no_grad():
        before = model.policy.row_logits(obs)
    model.save(tmp_path / "m.zip")
    loaded = KLPPO.load(tmp_path / "m.zip", device="cpu")
    assert isinstance(loaded.policy, ReplicaSetPolicy) and isinstance(loaded.reference_policy, ReplicaSetPolicy)
    with th.no_grad():
        assert th.allclose(loaded.policy.row_logits(obs), before)


def test_behaviour_cloning_learns_an_argmin_expert(model):
    report = behaviour_clone(
        model, RowsEnv(), smallest_first_column, n_samples=1000, epochs=10, batch_size=100, learning_rate=3e-3, seed=0
    )
    assert report.val_accuracy > 0.9


@pytest.mark.parametrize(
    "observation_space, action_space",
    [
        (spaces.Box(0, 1, (20,), np.float32), spaces.Discrete(20)),
        (spaces.Box(0, 1, (4, 5), np.float32), spaces.Discrete(3)),
        (spaces.Box(0, 1, (4, 5), np.float32), spaces.Box(0, 1, (4,), np.float32)),
    ],
)
def test_spaces_without_one_action_per_row_are_rejected(observation_space, action_space):
    with pytest.raises(ReplicaSetPolicyError, match="ReplicaSetPolicy needs"):
        ReplicaSetPolicy(observation_space, action_space, lambda _: 1e-3)


def test_net_arch_dict_and_list(model):
    policy = ReplicaSetPolicy(model.observation_space, model.action_space, lambda _: 1e-3, net_arch=dict(pi=[8], vf=[16, 16]))
    assert policy.mlp_extractor.latent_dim_pi == 8 and policy.mlp_extractor.latent_dim_vf == 32
    with pytest.raises(ReplicaSetPolicyError, match="at least one hidden layer"):
        ReplicaSetPolicy(model.observation_space, model.action_space, lambda _: 1e-3, net_arch=[])


def test_maskable_ppo_trains_the_maskable_variant_on_the_routing_env():
    sb3_contrib = pytest.importorskip("sb3_contrib")
    from stable_baselines3.common.env_util import make_vec_env

    from sb3_klppo.maskable import MaskableReplicaSetPolicy

    with pytest.raises(ValueError, match="MaskableActorCriticPolicy"):  # the reason for the variant: MaskablePPO rejects the plain policy
        sb3_contrib.MaskablePPO(ReplicaSetPolicy, RowsEnv(), **FAST)
    venv = make_vec_env("vidur_env:VidurRouting-v0", n_envs=2, seed=0, env_kwargs={"num_requests": 48})
    model = sb3_contrib.MaskablePPO(MaskableReplicaSetPolicy, venv, policy_kwargs={"net_arch": [16]}, **FAST)
    assert isinstance(model.policy, MaskableReplicaSetPolicy)
    model.learn(256)
    assert model.num_timesteps == 256
    masks = np.stack(venv.env_method("action_masks"))
    masks[:, 0] = False  # forbid replica 0: the policy must never choose it
    masks[:, 1] = True
    obs = venv.reset()
    for _ in range(20):
        actions, _ = model.predict(obs, action_masks=masks)
        assert not np.any(actions == 0)
    # Same weights, same scores as the plain policy: the variant only adds masking.
    plain = ReplicaSetPolicy(model.observation_space, model.action_space, lambda _: 1e-3, net_arch=[16])
    plain.load_state_dict(model.policy.state_dict())
    with th.no_grad():
        tensor = th.as_tensor(obs)
        assert th.allclose(plain.row_logits(tensor), model.policy.row_logits(tensor))
