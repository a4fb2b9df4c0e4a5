"""KLPPO: loss terms against hand computations, schedules, save/load, PPO equivalence, spaces, learning."""

from __future__ import annotations

import copy
import io
import math
import zipfile

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.distributions import (
    CategoricalDistribution,
    DiagGaussianDistribution,
    MultiCategoricalDistribution,
)
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import (
    IdentityEnv,
    IdentityEnvBox,
    IdentityEnvMultiBinary,
    IdentityEnvMultiDiscrete,
)
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import Logger

from sb3_klppo import KLPPO
from sb3_klppo.config import all_knobs
from sb3_klppo.klppo import (
    DEFAULT_KL_ESTIMATOR,
    KL_ESTIMATORS,
    KLPPOArgumentError,
    distribution_kl,
    entropy_floor_penalty,
    kl_penalty,
    linear_schedule_value,
    reference_kl,
)

PPO_TRAIN_KEYS = {
    "train/entropy_loss",
    "train/policy_gradient_loss",
    "train/value_loss",
    "train/approx_kl",
    "train/clip_fraction",
    "train/loss",
    "train/explained_variance",
    "train/n_updates",
    "train/clip_range",
}
KLPPO_TRAIN_KEYS = {
    "train/kl_penalty",
    "train/kl_coef",
    "train/ref_kl",
    "train/ref_kl_coef",
    "train/entropy",
    "train/entropy_penalty",
}


def categorical(logits: list[list[float]]) -> CategoricalDistribution:
    logits_t = th.tensor(logits)
    return CategoricalDistribution(logits_t.shape[1]).proba_distribution(logits_t)


def small_model(env="CartPole-v1", **kwargs) -> KLPPO:
    defaults = dict(n_steps=32, batch_size=32, n_epochs=1, seed=0, device="cpu", policy_kwargs=dict(net_arch=[16]))
    return KLPPO("MlpPolicy", env, **{**defaults, **kwargs})


def fill_buffer(model: KLPPO, seed: int, zero_advantages: bool = False) -> None:
    """Fill the rollout buffer with random observations and the current policy's actions."""
    space = copy.deepcopy(model.observation_space)
    space.seed(seed)
    buffer = model.rollout_buffer
    buffer.reset()
    n_envs = model.n_envs
    rng = np.random.default_rng(seed)
    for _ in range(model.n_steps):
        obs = np.stack([space.sample() for _ in range(n_envs)])
        with th.no_grad():
            actions, values, log_probs = model.policy(model.policy.obs_to_tensor(obs)[0])
        buffer.add(obs, actions.numpy(), rng.normal(size=n_envs), np.zeros(n_envs), values, log_probs)
    buffer.compute_returns_and_advantage(last_values=th.zeros(n_envs, 1), dones=np.zeros(n_envs))
    if zero_advantages:
        buffer.advantages[:] = 0.0


def perturb(policy, scale: float, seed: int) -> None:
    generator = th.Generator().manual_seed(seed)
    with th.no_grad():
        for param in policy.action_net.parameters():
            param.add_(scale * th.randn(param.shape, generator=generator))


def buffer_obs(model: KLPPO) -> th.Tensor:
    return model.policy.obs_to_tensor(model.rollout_buffer.observations.reshape(-1, *model.observation_space.shape))[0]


# ----------------------------------------------------------------------------- schedule


def test_linear_schedule_value_at_start_mid_end_and_beyond():
    assert linear_schedule_value(0, 1.0, 0.2, 100) == 1.0
    assert linear_schedule_value(50, 1.0, 0.2, 100) == pytest.approx(0.6)
    assert linear_schedule_value(100, 1.0, 0.2, 100) == pytest.approx(0.2)
    assert linear_schedule_value(10_000, 1.0, 0.2, 100) == pytest.approx(0.2)
    assert linear_schedule_value(5, 1.0, 0.2, 0) == 0.2


def test_model_schedules_follow_the_gradient_step_counter():
    model = small_model(kl_ref_coef_initial=1.0, kl_ref_coef_final=0.0, kl_ref_decay_steps=10,
                        entropy_warmup_coef=0.1, entropy_warmup_steps=4)
    assert model.ref_kl_coef == 1.0 and model.entropy_bonus_coef == pytest.approx(0.1)
    model._n_kl_updates = 5
    assert model.ref_kl_coef == pytest.approx(0.5) and model.entropy_bonus_coef == 0.0
    model._n_kl_updates = 20
    assert model.ref_kl_coef == 0.0


# ----------------------------------------------------------------------- loss terms by hand


def test_k1_clamped_penalty_matches_hand_computation_and_clamps():
    logp_old = th.tensor([-0.5, -1.0, -2.0, -0.1])
    logp_new = th.tensor([-0.7, -1.5, -1.8, -0.1])
    # mean(logp_old - logp_new) = (0.2 + 0.5 - 0.2 + 0) / 4
    assert kl_penalty(logp_old, logp_new, "k1_clamped").item() == pytest.approx(0.125)
    assert kl_penalty(logp_new, logp_old, "k1_clamped").item() == 0.0


def test_k3_penalty_matches_hand_computation():
    logp_old = th.tensor([-0.5, -1.0])
    logp_new = th.tensor([-0.7, -0.8])
    expected = np.mean([math.exp(r) - 1 - r for r in (-0.2, 0.2)])
    assert kl_penalty(logp_old, logp_new, "k3").item() == pytest.approx(expected, rel=1e-6)


def test_exact_penalty_is_the_categorical_kl():
    old = categorical([[0.0, 1.0, 2.0], [1.0, 1.0, 0.0]])
    new = categorical([[0.5, 0.5, 0.5], [2.0, 0.0, 0.0]])
    p, q = old.distribution.probs, new.distribution.probs
    expected = (p * (p.log() - q.log())).sum(1).mean().item()
    unused = th.zeros(2)
    assert kl_penalty(unused, unused, "exact", old, new).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(KLPPOArgumentError, match="old_dist"):
        kl_penalty(unused, unused, "exact")
    with pytest.raises(KLPPOArgumentError, match="kl_estimator"):
        kl_penalty(unused, unused, "k2")



def test_an_estimator_is_one_registry_entry_that_the_config_and_kl_penalty_read(monkeypatch):
    knob = next(k for k in all_knobs() if k.name == "kl_estimator")
    assert knob.field.metadata["choices"] == tuple(KL_ESTIMATORS)
    assert knob.field.default == DEFAULT_KL_ESTIMATOR == "k1_clamped"
    monkeypatch.setitem(KL_ESTIMATORS, "half_k1", lambda old, new, *_: th.mean(old - new) / 2)
    logp_old, logp_new = th.tensor([-0.5, -1.0]), th.tensor([-0.7, -1.5])
    assert kl_penalty(logp_old, logp_new, "half_k1").item() == pytest.approx(0.175)
    assert KLPPO("MlpPolicy", "CartPole-v1", kl_estimator="half_k1", n_steps=16, batch_size=8).kl_estimator == "half_k1"

def test_multidiscrete_kl_sums_the_components():
    dist = MultiCategoricalDistribution([2, 3]).proba_distribution(th.tensor([[0.0, 1.0, 0.0, 0.0, 3.0]]))
    ref = MultiCategoricalDistribution([2, 3]).proba_distribution(th.tensor([[1.0, 0.0, 1.0, 2.0, 0.0]]))

    def kl(a, b):
        p, q = th.softmax(th.tensor(a), 0), th.softmax(th.tensor(b), 0)
        return (p * (p.log() - q.log())).sum().item()

    expected = kl([0.0, 1.0], [1.0, 0.0]) + kl([0.0, 0.0, 3.0], [1.0, 2.0, 0.0])
    assert reference_kl(dist, ref).item() == pytest.approx(expected, rel=1e-6)


def test_gaussian_kl_is_closed_form_summed_over_action_dims():
    mean_p, mean_q = th.tensor([[0.0, 1.0]]), th.tensor([[0.5, -1.0]])
    log_std_p, log_std_q = th.tensor([0.0, -0.5]), th.tensor([0.3, 0.0])
    p = DiagGaussianDistribution(2).proba_distribution(mean_p, log_std_p)
    q = DiagGaussianDistribution(2).proba_distribution(mean_q, log_std_q)
    s_p, s_q = log_std_p.exp(), log_std_q.exp()
    per_dim = th.log(s_q / s_p) + (s_p**2 + (mean_p - mean_q) ** 2) / (2 * s_q**2) - 0.5
    assert distribution_kl(p, q).shape == (1,)
    assert distribution_kl(p, q).item() == pytest.approx(per_dim.sum().item(), rel=1e-6)


def test_reference_kl_is_the_mean_over_states_and_zero_for_identical_policies():
    dist = categorical([[0.0, 2.0], [1.0, 0.0], [0.0, 0.0]])
    ref = categorical([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    assert reference_kl(dist, ref).item() == pytest.approx(distribution_kl(dist, ref).mean().item())
    assert reference_kl(ref, ref).item() == pytest.approx(0.0, abs=1e-7)


def test_entropy_floor_value_and_gradient_below_and_above_the_floor():
    logits = th.zeros(4, 3, requires_grad=True)  # uniform over 3 actions: entropy log(3) ~ 1.0986
    entropy = th.distributions.Categorical(logits=logits * th.tensor([3.0, 0.0, 0.0])).entropy()
    below = entropy_floor_penalty(entropy, entropy_min=1.2, coef=2.0)
    assert below.item() == pytest.approx(2.0 * (1.2 - entropy.mean().item()), rel=1e-6)

    logits = th.tensor([[2.0, 0.0, -1.0]] * 4, requires_grad=True)
    penalty = entropy_floor_penalty(th.distributions.Categorical(logits=logits).entropy(), 1.0, 2.0)
    penalty.backward()
    assert penalty.item() > 0 and logits.grad.abs().sum().item() > 0

    logits = th.tensor([[2.0, 0.0, -1.0]] * 4, requires_grad=True)
    penalty = entropy_floor_penalty(th.distributions.Categorical(logits=logits).entropy(), 0.1, 2.0)
    penalty.backward()
    assert penalty.item() == 0.0 and logits.grad.abs().sum().item() == 0.0


# ---------------------------------------------------------------------- composition in train()


def test_train_adds_each_term_as_computed_by_hand():
    """With lr=0 and one minibatch, the logged loss grows by exactly the hand-computed terms."""
    model = small_model(learning_rate=0.0)
    model.set_logger(Logger(folder=None, output_formats=[]))
    fill_buffer(model, seed=1)
    reference = copy.deepcopy(model.policy)
    perturb(model.policy, scale=0.5, seed=2)  # pi_theta != pi_old = pi_ref

    model.train()
    plain_loss = model.logger.name_to_value["train/loss"]

    obs = buffer_obs(model)
    actions = th.as_tensor(model.rollout_buffer.actions.reshape(-1)).long()
    logp_old = th.as_tensor(model.rollout_buffer.log_probs.reshape(-1))
    with th.no_grad():
        _, logp_new, entropy = model.policy.evaluate_actions(obs, actions)
        k1 = max((logp_old - logp_new).mean().item(), 0.0)
        ref_kl = reference_kl(model.policy.get_distribution(obs), reference.get_distribution(obs)).item()
    assert k1 > 0 and ref_kl > 0

    model.kl_coef = 0.3
    model.set_reference_policy(reference)
    model.kl_ref_coef_initial = model.kl_ref_coef_final = 0.7
    model.entropy_min, model.entropy_min_coef = math.log(2) + 1.0, 2.0  # above the max entropy: active
    model.entropy_warmup_coef, model.entropy_warmup_steps = 0.05, 10
    bonus = model.entropy_bonus_coef
    assert 0 < bonus < 0.05  # the clock moved during the first train()
    model.train()

    logged = model.logger.name_to_value
    floor = 2.0 * (math.log(2) + 1.0 - entropy.mean().item())
    expected_extra = 0.3 * k1 + 0.7 * ref_kl + floor - bonus * entropy.mean().item()
    assert logged["train/loss"] - plain_loss == pytest.approx(expected_extra, rel=1e-4)
    assert logged["train/kl_penalty"] == pytest.approx(0.3 * k1, rel=1e-5)
    assert logged["train/ref_kl"] == pytest.approx(ref_kl, rel=1e-5)
    assert logged["train/ref_kl_coef"] == 0.7 and logged["train/kl_coef"] == 0.3
    assert logged["train/entropy"] == pytest.approx(entropy.mean().item(), rel=1e-5)
    assert logged["train/entropy_penalty"] == pytest.approx(floor, rel=1e-5)
    assert logged["train/entropy_loss"] == pytest.approx(-entropy.mean().item(), rel=1e-5)


def test_exact_estimator_compares_with_the_policy_at_the_start_of_the_update():
    """The snapshot is taken before the first gradient step: on that step the exact KL is zero,
    even when the buffer came from another policy (the sample estimators see that drift)."""
    logged = {}
    for estimator in ("exact", "k1_clamped"):
        model = small_model(learning_rate=0.0, kl_coef=1.0, kl_estimator=estimator)
        model.set_logger(Logger(folder=None, output_formats=[]))
        fill_buffer(model, seed=1)
        perturb(model.policy, scale=0.5, seed=2)
        model.train()
        logged[estimator] = model.logger.name_to_value["train/kl_penalty"]
    assert logged["exact"] == pytest.approx(0.0, abs=1e-7)
    assert logged["k1_clamped"] > 1e-3

    model = small_model(learning_rate=1e-2, n_epochs=3, kl_coef=1.0, kl_estimator="exact")
    model.set_logger(Logger(folder=None, output_formats=[]))
    fill_buffer(model, seed=1)
    model.train()
    assert model.logger.name_to_value["train/kl_penalty"] > 0  # later steps drift from the snapshot


def test_reference_kl_pulls_a_perturbed_policy_back():
    """Only the reference term on (zero advantages, no value or entropy loss): KL(pi || ref) shrinks."""

    def kl_after_updates(ref_coef: float) -> tuple[float, float]:
        model = small_model(
            env=IdentityEnv(4), learning_rate=1e-2, n_epochs=4, batch_size=16, ent_coef=0.0, vf_coef=0.0,
            normalize_advantage=False, kl_ref_coef_initial=ref_coef, kl_ref_coef_final=ref_coef,
        )
        model.set_logger(Logger(folder=None, output_formats=[]))
        model.set_reference_policy()
        perturb(model.policy, scale=1.0, seed=3)
        obs = th.arange(4)

        def kl_to_reference() -> float:
            with th.no_grad():
                dist, ref_dist = model.policy.get_distribution(obs), model.reference_policy.get_distribution(obs)
                return reference_kl(dist, ref_dist).item()

        before = kl_to_reference()
        for update in range(3):
            fill_buffer(model, seed=10 + update, zero_advantages=True)
            model.train()
        return before, kl_to_reference()

    before, after = kl_after_updates(ref_coef=1.0)
    assert before > 0.1
    assert after < 0.5 * before
    before_off, after_off = kl_after_updates(ref_coef=0.0)
    assert after_off == pytest.approx(before_off, rel=1e-6)


# ------------------------------------------------------------------------ PPO equivalence


def parameters(model) -> dict[str, th.Tensor]:
    return {k: v.clone() for k, v in model.policy.state_dict().items()}


def test_klppo_with_features_off_equals_ppo_exactly():
    kwargs = dict(n_steps=64, batch_size=32, n_epochs=2, seed=7, device="cpu", policy_kwargs=dict(net_arch=[32]))
    ppo = PPO("MlpPolicy", "CartPole-v1", **kwargs).learn(256)
    klppo = KLPPO("MlpPolicy", "CartPole-v1", **kwargs).learn(256)
    # A reference with zero weights is only measured, never trained against: still PPO.
    monitored = KLPPO("MlpPolicy", "CartPole-v1", **kwargs)
    monitored.set_reference_policy()
    monitored.learn(256)
    expected = parameters(ppo)
    for model in (klppo, monitored):
        got = parameters(model)
        assert all(th.equal(expected[k], got[k]) for k in expected)
    assert monitored.logger.name_to_value["train/ref_kl"] > 0


# --------------------------------------------------------------------------- save / load


def test_save_load_round_trip_restores_reference_and_step_counter(tmp_path):
    model = small_model(kl_coef=0.1, kl_ref_coef_initial=0.5, kl_ref_decay_steps=1000, entropy_min=0.2)
    model.set_reference_policy()
    perturb(model.reference_policy, scale=0.3, seed=4)
    model.learn(64)
    steps = model.kl_schedule_step
    assert steps == 2
    model.save(tmp_path / "model.zip")
    with zipfile.ZipFile(tmp_path / "model.zip") as archive:
        assert "reference_policy.pt" in archive.namelist()  # a state dict, not a pickle

    loaded = KLPPO.load(tmp_path / "model.zip", env=make_vec_env("CartPole-v1", n_envs=1), device="cpu")
    assert loaded.kl_schedule_step == steps
    assert (loaded.kl_coef, loaded.kl_ref_coef_initial, loaded.entropy_min) == (0.1, 0.5, 0.2)
    assert loaded.ref_kl_coef == pytest.approx(model.ref_kl_coef)
    original, restored = model.reference_policy.state_dict(), loaded.reference_policy.state_dict()
    assert all(th.equal(original[k], restored[k]) for k in original)
    assert not any(p.requires_grad for p in loaded.reference_policy.parameters())
    assert not loaded.reference_policy.training
    assert all(p.device == loaded.device for p in loaded.reference_policy.parameters())

    before = {k: v.clone() for k, v in restored.items()}
    loaded.learn(64, reset_num_timesteps=False)
    assert loaded.kl_schedule_step == steps + 2  # the schedule continues
    after = loaded.reference_policy.state_dict()
    assert all(th.equal(before[k], after[k]) for k in before)  # never trained


def test_plain_ppo_loads_a_klppo_zip_with_a_reference(tmp_path):
    model = small_model(kl_coef=0.1, kl_ref_coef_initial=0.5, kl_ref_decay_steps=100)
    model.set_reference_policy()
    perturb(model.reference_policy, scale=0.3, seed=4)
    model.learn(64)
    model.save(tmp_path / "model.zip")
    with zipfile.ZipFile(tmp_path / "model.zip") as archive:
        assert not [name for name in archive.namelist() if name.startswith("reference_policy") and name.endswith(".pth")]
    plain = PPO.load(tmp_path / "model.zip", device="cpu")
    assert type(plain) is PPO
    expected, got = parameters(model), parameters(plain)
    assert all(th.equal(expected[k], got[k]) for k in expected)
    obs = np.stack([model.observation_space.sample() for _ in range(8)])
    assert np.array_equal(plain.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])


def test_klppo_loads_its_zips_from_buffers_and_the_older_pth_layout(tmp_path):
    model = small_model()
    model.set_reference_policy()
    perturb(model.reference_policy, scale=0.3, seed=4)
    expected = model.reference_policy.state_dict()
    buffer = io.BytesIO()
    model.save(buffer)
    buffer.seek(0)
    PPO.save(model, tmp_path / "older.zip")  # SB3's own save: the reference as reference_policy.pth
    with zipfile.ZipFile(tmp_path / "older.zip") as archive:
        assert "reference_policy.pth" in archive.namelist()
    for source in (buffer, tmp_path / "older.zip"):
        loaded = KLPPO.load(source, device="cpu")
        got = loaded.reference_policy.state_dict()
        assert all(th.equal(expected[k], got[k]) for k in expected)


def test_replica_set_policy_is_declared_in_klppos_own_aliases():
    import ast
    import inspect

    from sb3_klppo import klppo, policies

    assert KLPPO.policy_aliases["ReplicaSetPolicy"] is policies.ReplicaSetPolicy
    assert "ReplicaSetPolicy" not in PPO.policy_aliases  # PPO's own table is not patched
    body = ast.parse(inspect.getsource(klppo.KLPPO)).body[0].body
    declared = [n for n in body if isinstance(n, ast.AnnAssign) and getattr(n.target, "id", None) == "policy_aliases"]
    assert declared, "policy_aliases is not declared in KLPPO's class body"
    source = inspect.getsource(policies)  # policies.py neither imports nor patches KLPPO
    assert "policy_aliases =" not in source and "sb3_klppo.klppo" not in source


def test_klppo_loads_a_plain_ppo_zip(tmp_path):
    ppo = PPO("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, seed=0, device="cpu")
    ppo.save(tmp_path / "ppo.zip")
    loaded = KLPPO.load(tmp_path / "ppo.zip", device="cpu")
    assert isinstance(loaded, KLPPO) and loaded.reference_policy is None
    assert loaded.kl_coef == 0.0 and loaded.kl_schedule_step == 0
    expected, got = parameters(ppo), parameters(loaded)
    assert all(th.equal(expected[k], got[k]) for k in expected)


def test_set_parameters_round_trips_with_a_reference(tmp_path):
    source = small_model()
    source.set_reference_policy()
    perturb(source.reference_policy, scale=0.3, seed=5)
    perturb(source.policy, scale=0.3, seed=6)
    source.save(tmp_path / "source.zip")

    for load_from in (source.get_parameters(), tmp_path / "source.zip"):
        target = small_model(seed=1)
        assert target.reference_policy is None
        target.set_parameters(load_from)
        for name in ("policy", "reference_policy"):
            expected, got = getattr(source, name).state_dict(), getattr(target, name).state_dict()
            assert all(th.equal(expected[k], got[k]) for k in expected)


def test_set_reference_policy_accepts_models_policies_and_zips(tmp_path):
    other = PPO(
        "MlpPolicy", "CartPole-v1", n_steps=32, batch_size=32, seed=3, device="cpu", policy_kwargs=dict(net_arch=[8])
    )
    other.save(tmp_path / "other.zip")
    model = small_model()
    for source in (other, other.policy, tmp_path / "other.zip", str(tmp_path / "other.zip")):
        model.set_reference_policy(source)
        expected, got = other.policy.state_dict(), model.reference_policy.state_dict()
        assert all(th.equal(expected[k], got[k]) for k in expected)
        assert model.reference_policy is not other.policy

    # A reference of another architecture survives save/load.
    model.save(tmp_path / "model.zip")
    loaded = KLPPO.load(tmp_path / "model.zip", device="cpu")
    assert loaded.reference_policy.net_arch == [8]

    with pytest.raises(KLPPOArgumentError, match="does not match"):
        model.set_reference_policy(PPO("MlpPolicy", "MountainCar-v0", device="cpu").policy)
    with pytest.raises(KLPPOArgumentError, match="not an SB3 model zip"):
        (tmp_path / "junk.zip").write_text("not a zip")
        model.set_reference_policy(tmp_path / "junk.zip")


@pytest.mark.parametrize(
    "field, value",
    [
        ("kl_estimator", "k2"),
        ("kl_coef", -1.0),
        ("kl_ref_decay_steps", -5),
        ("entropy_min_coef", float("nan")),
        ("entropy_min", float("inf")),
    ],
)
def test_invalid_arguments_are_named(field, value):
    with pytest.raises(KLPPOArgumentError, match=field):
        small_model(**{field: value})


def test_unused_initial_reference_weight_warns():
    with pytest.warns(UserWarning, match="kl_ref_coef_initial"):
        small_model(kl_ref_coef_initial=1.0)


# ------------------------------------------------------------------------------- spaces


SPACES = {
    "discrete": (lambda: IdentityEnv(4), {}),
    "multidiscrete": (lambda: IdentityEnvMultiDiscrete(3), {}),
    "multibinary": (lambda: IdentityEnvMultiBinary(3), {}),
    "box": (IdentityEnvBox, {}),
    # gSDE with tanh squashing: no closed-form entropy, the Monte-Carlo estimate is used.
    "box_gsde_squashed": (lambda: gym.make("Pendulum-v1"), dict(use_sde=True, policy_kwargs=dict(squash_output=True))),
}


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("estimator", ["k1_clamped", "k3", "exact"])
def test_all_features_run_on_each_action_space(space, estimator):
    make_env, extra = SPACES[space]
    model = small_model(
        env=make_env(), n_epochs=2, batch_size=16, kl_coef=0.2, kl_estimator=estimator,
        kl_ref_coef_initial=0.5, kl_ref_coef_final=0.1, kl_ref_decay_steps=4,
        entropy_min=5.0, entropy_min_coef=0.5, entropy_warmup_coef=0.01, entropy_warmup_steps=4, **extra,
    )
    model.set_reference_policy()
    model.learn(64)
    logged = model.logger.name_to_value
    assert PPO_TRAIN_KEYS | KLPPO_TRAIN_KEYS <= set(logged)
    assert all(math.isfinite(logged[k]) for k in PPO_TRAIN_KEYS | KLPPO_TRAIN_KEYS)
    assert logged["train/ref_kl"] > 0 and logged["train/kl_penalty"] >= 0
    assert logged["train/entropy"] == pytest.approx(-logged["train/entropy_loss"])
    assert logged["train/entropy_penalty"] == pytest.approx(0.5 * (5.0 - logged["train/entropy"]), rel=1e-5)
    # Steps 0-3 (first update) use 0.5, 0.4, 0.3, 0.2; steps 4-7 (the logged second update) 0.1.
    assert logged["train/ref_kl_coef"] == pytest.approx(0.1)
    assert model.kl_schedule_step == 8
    model.set_reference_policy()  # a snapshot after training (the policy holds a live graph) works too
    assert reference_kl_to_self(model) == pytest.approx(0.0, abs=1e-6)


def reference_kl_to_self(model: KLPPO) -> float:
    obs = buffer_obs(model)
    with th.no_grad():
        return reference_kl(model.policy.get_distribution(obs), model.reference_policy.get_distribution(obs)).item()


def test_cartpole_still_learns_with_penalties_on():
    env = make_vec_env("CartPole-v1", n_envs=8, seed=0)
    model = KLPPO(
        "MlpPolicy", env, n_steps=32, batch_size=128, n_epochs=10, learning_rate=1e-3, gamma=0.98,
        gae_lambda=0.8, seed=0, device="cpu",
        kl_coef=0.2, kl_ref_coef_initial=0.2, kl_ref_coef_final=0.0, kl_ref_decay_steps=200,
        entropy_min=0.2, entropy_warmup_coef=0.01, entropy_warmup_steps=200,
    )
    model.set_reference_policy()  # the random initial policy: the decaying pull must not block learning
    model.learn(8_000)
    mean_reward, _ = evaluate_policy(model, make_vec_env("CartPole-v1", n_envs=1, seed=100), n_eval_episodes=10)
    assert mean_reward > 100  # random play scores ~22; this setup scores ~120-480 over seeds 0-3 (190 here)
    assert model.ref_kl_coef == 0.0 and model.last_update_stats["ref_kl"] > 0


def test_train_differs_from_sb3s_ppo_train_only_in_marked_lines():
    import difflib
    import inspect
    import re

    import stable_baselines3

    ours = inspect.getsource(KLPPO.train)
    copied = re.search(r"of stable-baselines3 (\d+\.\d+\.\d+)", ours)[1]
    if stable_baselines3.__version__ != copied:
        pytest.skip(f"KLPPO.train was copied from SB3 {copied}; SB3 {stable_baselines3.__version__} is installed")

    def without_docstring(source: str) -> list[str]:
        head, _, rest = source.partition('"""')
        return (head + rest.partition('"""')[2]).splitlines()

    theirs, body = without_docstring(inspect.getsource(PPO.train)), without_docstring(ours)
    matcher = difflib.SequenceMatcher(a=theirs, b=body, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        assert tag == "insert", f"SB3 lines changed or removed: {theirs[i1:i2]}"
        added = [line for line in body[j1:j2] if line.strip()]
        assert any("# KLPPO:" in line for line in added), f"unmarked difference: {added}"
