"""KL-regularised PPO: SB3's PPO plus KL penalties, a frozen reference policy and an entropy floor.

The algorithm is a small diff on :class:`stable_baselines3.PPO`: only :meth:`KLPPO.train` changes, and
the extra loss terms are plain functions of one minibatch (:func:`kl_penalty`, :func:`reference_kl`,
:func:`entropy_floor_penalty`, :func:`linear_schedule_value`) so they can be checked by hand.

A KLPPO zip is a PPO zip plus one member, ``reference_policy.pt`` (the reference's state dict):
SB3's loader reads only ``*.pth`` members, so ``stable_baselines3.PPO.load`` opens a KLPPO zip as
a plain PPO model (the policy class must be importable, e.g. ``sb3_klppo`` installed for
``ReplicaSetPolicy``), while :meth:`KLPPO.load` restores the reference too.
"""

from __future__ import annotations

import contextlib
import io
import math
import pathlib
import warnings
import zipfile
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.save_util import load_from_zip_file, open_path
from stable_baselines3.common.type_aliases import GymEnv, Schedule, TensorDict
from stable_baselines3.common.utils import explained_variance, get_device
from torch.nn import functional as F

from sb3_klppo.errors import ConfigError
from sb3_klppo.policies import ReplicaSetPolicy

REFERENCE_ATTR = "reference_policy"
REFERENCE_FILE = "reference_policy.pt"
"""Zip member of the reference's state dict: not ``*.pth``, so SB3's loader (and PPO.load) skips it."""
ZipSource = str | pathlib.Path | io.BufferedIOBase
SelfKLPPO = TypeVar("SelfKLPPO", bound="KLPPO")
# Figures KLPPO adds to PPO's train/* keys (minibatch means of the last update).
LOGGED_STATS = ("kl_penalty", "kl_coef", "ref_kl", "ref_kl_coef", "entropy", "entropy_penalty", "entropy_warmup_coef")


class KLPPOArgumentError(ConfigError):
    """A KLPPO argument or reference policy is invalid; the message names the offending field."""


# ---------------------------------------------------------------------------------------------
# Minibatch loss terms (pure functions, so tests can compare them with hand computations)
# ---------------------------------------------------------------------------------------------


def linear_schedule_value(step: int, initial: float, final: float, decay_steps: int) -> float:
    """Value of a coefficient that moves linearly from ``initial`` to ``final`` over ``decay_steps``.

    Used for the reference-KL coefficient and the entropy warm-up bonus, both counted in gradient
    steps. ``decay_steps == 0`` means ``final`` applies from the first step; after ``decay_steps``
    the value is held at ``final``.
    """
    if decay_steps <= 0:
        return float(final)
    fraction = min(max(step, 0) / decay_steps, 1.0)
    return float(initial + fraction * (final - initial))


def _torch_distributions(dist: Distribution) -> list[th.distributions.Distribution]:
    """The torch distributions behind an SB3 distribution (a list for MultiDiscrete)."""
    inner = dist.distribution
    return list(inner) if isinstance(inner, (list, tuple)) else [inner]


def distribution_kl(p: Distribution, q: Distribution) -> th.Tensor:
    """Exact per-state ``KL(p || q)``, shape ``(batch,)``, for two SB3 distributions of the same kind.

    Categorical: one closed form; MultiDiscrete: sum over the independent sub-actions; Gaussian and
    Bernoulli: sum over action dimensions. Squashed (tanh) Gaussians are handled through their
    pre-squash Normal: KL is invariant under the shared bijection, so the value is still exact.
    """
    p_parts, q_parts = _torch_distributions(p), _torch_distributions(q)
    if len(p_parts) != len(q_parts):
        raise KLPPOArgumentError(
            f"cannot compare distributions with {len(p_parts)} and {len(q_parts)} components"
        )
    per_part = [_sum_action_dims(th.distributions.kl_divergence(a, b)) for a, b in zip(p_parts, q_parts)]
    return th.stack(per_part, dim=0).sum(dim=0)


def _sum_action_dims(per_dim: th.Tensor) -> th.Tensor:
    """Sum a ``(batch, action_dim)`` tensor over independent action dimensions; keep ``(batch,)``."""
    return per_dim.sum(dim=-1) if per_dim.dim() > 1 else per_dim


def reference_kl(dist: Distribution, ref_dist: Distribution) -> th.Tensor:
    """Minibatch mean of the exact ``KL(pi_theta || pi_ref)``; gradients flow through ``dist`` only."""
    return distribution_kl(dist, ref_dist).mean()


def _k1_clamped_kl(logp_old: th.Tensor, logp_new: th.Tensor, old_dist: Distribution | None,
                   new_dist: Distribution | None) -> th.Tensor:
    """``mean(logp_old - logp_new).clamp(min=0)``: the mean of the naive estimator can be negative
    on a finite batch; the clamp keeps the penalty from becoming a bonus."""
    return th.mean(logp_old - logp_new).clamp(min=0.0)


def _k3_kl(logp_old: th.Tensor, logp_new: th.Tensor, old_dist: Distribution | None,
           new_dist: Distribution | None) -> th.Tensor:
    """``mean((r - 1) - log r)`` with ``r = pi_theta / pi_old``, unbiased and non-negative per sample
    (http://joschu.net/blog/kl-approx.html); the same formula as SB3's ``approx_kl``."""
    log_ratio = logp_new - logp_old
    return th.mean(th.exp(log_ratio) - 1.0 - log_ratio)


def _exact_kl(logp_old: th.Tensor, logp_new: th.Tensor, old_dist: Distribution | None,
              new_dist: Distribution | None) -> th.Tensor:
    """Mean analytic ``KL(pi_old || pi_theta)`` per state; needs both distributions."""
    if old_dist is None or new_dist is None:
        raise KLPPOArgumentError("kl_estimator='exact' needs both old_dist and new_dist")
    return distribution_kl(old_dist, new_dist).mean()


KLEstimator = Callable[[th.Tensor, th.Tensor, Distribution | None, Distribution | None], th.Tensor]
"""(logp_old, logp_new, old_dist, new_dist) -> minibatch estimate of ``KL(pi_old || pi_theta)``."""

KL_ESTIMATORS: dict[str, KLEstimator] = {"k1_clamped": _k1_clamped_kl, "k3": _k3_kl, "exact": _exact_kl}
"""The KL estimators by the name ``kl_estimator`` takes; the first is the default. The config's
choices and KLPPO's argument check read this table, so a new estimator is one function and one
entry here."""
DEFAULT_KL_ESTIMATOR = next(iter(KL_ESTIMATORS))


def kl_penalty(
    logp_old: th.Tensor,
    logp_new: th.Tensor,
    estimator: str = DEFAULT_KL_ESTIMATOR,
    old_dist: Distribution | None = None,
    new_dist: Distribution | None = None,
) -> th.Tensor:
    """Estimate of ``KL(pi_old || pi_theta)`` on a minibatch (the quantity ``kl_coef`` multiplies),
    by the function :data:`KL_ESTIMATORS` holds under ``estimator``: ``"k1_clamped"`` (the naive
    estimator's mean, clamped at 0), ``"k3"`` (``mean((r - 1) - log r)``) or ``"exact"`` (analytic,
    from ``old_dist`` and ``new_dist``); each function's docstring says why."""
    try:
        estimate = KL_ESTIMATORS[estimator]
    except KeyError:
        raise KLPPOArgumentError(f"kl_estimator must be one of {tuple(KL_ESTIMATORS)}, got {estimator!r}") from None
    return estimate(logp_old, logp_new, old_dist, new_dist)


def entropy_floor_penalty(entropy: th.Tensor, entropy_min: float, coef: float) -> th.Tensor:
    """``coef * max(0, entropy_min - mean(entropy))``: a hinge with gradient only below the floor.

    The hinge is linear, so the push back up does not vanish as the entropy approaches the floor.
    """
    return coef * th.clamp(entropy_min - entropy.mean(), min=0.0)


# ---------------------------------------------------------------------------------------------
# Reference-policy helpers
# ---------------------------------------------------------------------------------------------


def _policy_spec(policy: BasePolicy) -> tuple[type[BasePolicy], dict[str, Any]]:
    """Class and constructor arguments that rebuild ``policy``'s architecture (SB3's own convention)."""
    return type(policy), policy._get_constructor_parameters()


def _build_frozen(spec: tuple[type[BasePolicy], dict[str, Any]], device: th.device) -> BasePolicy:
    """A fresh policy of the given architecture on ``device``, in eval mode with gradients off.

    Built under a forked torch RNG so that creating a reference (or loading a model that has one)
    does not shift the global random stream.
    """
    policy_class, kwargs = spec
    with th.random.fork_rng(devices=[]):
        policy = policy_class(**kwargs)
    policy = policy.to(device)
    policy.set_training_mode(False)
    for param in policy.parameters():
        param.requires_grad_(False)
    return policy


def _frozen_copy(policy: BasePolicy, device: th.device) -> BasePolicy:
    """A frozen copy of ``policy``'s weights: never trained, unaffected by later updates.

    Rebuilt from the constructor arguments rather than deep-copied, so transient tensors held by
    the policy (the last distribution's graph, gSDE noise, the optimizer state) are not copied.
    """
    frozen = _build_frozen(_policy_spec(policy), device)
    frozen.load_state_dict(policy.state_dict())
    return frozen


def _policy_from_zip(path: str | pathlib.Path | io.BufferedIOBase, device: th.device) -> BasePolicy:
    """Rebuild the policy stored in an SB3 model zip, whatever algorithm class saved it."""
    if isinstance(path, (str, pathlib.Path)) and not zipfile.is_zipfile(path):
        raise KLPPOArgumentError(f"reference policy path {str(path)!r} is not an SB3 model zip")
    data, params, _ = load_from_zip_file(path, device=device)
    if data is None or "policy" not in params or "policy_class" not in data:
        raise KLPPOArgumentError(f"reference policy zip {path!r} holds no SB3 policy")
    policy_kwargs = {k: v for k, v in data.get("policy_kwargs", {}).items() if k != "device"}
    with th.random.fork_rng(devices=[]):
        policy = data["policy_class"](
            data["observation_space"],
            data["action_space"],
            BasePolicy._dummy_schedule,
            use_sde=data.get("use_sde", False),
            **policy_kwargs,
        )
    policy.load_state_dict(params["policy"])
    return policy


def _readable_twice(path: ZipSource) -> tuple[ZipSource, ZipSource]:
    """Two handles on one zip: SB3's loader reads a buffer to an unknown position, and the reference
    member is read after it. Paths are simply reopened."""
    if isinstance(path, io.BufferedIOBase):
        content = path.read()
        return io.BytesIO(content), io.BytesIO(content)
    return path, path


def _reference_state(path: ZipSource, device: th.device | str) -> dict[str, th.Tensor] | None:
    """The reference's state dict stored by :meth:`KLPPO.save`, or None when the zip has none."""
    file = open_path(path, "r", verbose=0, suffix="zip")
    try:
        with zipfile.ZipFile(file) as archive:
            if REFERENCE_FILE not in archive.namelist():
                return None
            with archive.open(REFERENCE_FILE) as member:
                return th.load(io.BytesIO(member.read()), map_location=get_device(device), weights_only=True)
    finally:
        if isinstance(path, (str, pathlib.Path)):
            file.close()


class KLPPO(PPO):
    """
    Proximal Policy Optimization (clip version) with KL penalties, a frozen reference policy and an
    entropy floor. A drop-in replacement for :class:`stable_baselines3.PPO`: with every new
    feature off (the defaults) its updates equal PPO's exactly.

    Paper: https://arxiv.org/abs/1707.06347 (PPO; its adaptive-KL variant in section 4).
    KL estimators: http://joschu.net/blog/kl-approx.html

    Per minibatch, the loss is PPO's plus:

    - ``kl_coef * KL(pi_old || pi_theta)`` with the estimator chosen by ``kl_estimator``
      (see :func:`kl_penalty`); ``pi_old`` is the rollout policy.
    - ``ref_coef(t) * mean_s KL(pi_theta(.|s) || pi_ref(.|s))``, exact, against the frozen policy
      set by :meth:`set_reference_policy`; ``ref_coef`` decays linearly in gradient steps ``t``.
    - ``entropy_min_coef * max(0, entropy_min - mean entropy)`` (:func:`entropy_floor_penalty`)
      and ``-warmup_coef(t) * mean entropy``, a bonus fading linearly to zero.

    Entropy: Discrete, MultiDiscrete, MultiBinary and Box (diagonal Gaussian) actions have a closed
    form (summed over action dimensions). Where SB3 has none (gSDE with ``squash_output=True``),
    the entropy is the Monte-Carlo estimate ``-log pi_theta(a|s)`` at the rollout's actions
    (sampled from ``pi_old``), as SB3's PPO does for its entropy loss. KL terms stay exact for
    those too (see :func:`distribution_kl`).

    Logging: every ``train/*`` key of PPO, plus minibatch means over the last update of
    ``train/kl_penalty`` (the loss added, ``kl_coef`` x estimate), ``train/kl_coef``,
    ``train/ref_kl`` (exact KL to the reference, NaN without one), ``train/ref_kl_coef`` (schedule
    value; applied only with a reference), ``train/entropy`` (mean entropy, positive),
    ``train/entropy_penalty`` (the floor's loss), ``train/entropy_warmup_coef``, and
    ``train/kl_schedule_step``. The same figures with ``approx_kl``, ``clip_fraction`` and
    ``n_updates`` are kept in ``last_update_stats`` for callbacks.

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, ...)
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: The learning rate, it can be a function
        of the current progress remaining (from 1 to 0)
    :param n_steps: The number of steps to run for each environment per update
        (i.e. rollout buffer size is n_steps * n_envs where n_envs is number of environment copies running in parallel)
    :param batch_size: Minibatch size
    :param n_epochs: Number of epoch when optimizing the surrogate loss
    :param gamma: Discount factor
    :param gae_lambda: Factor for trade-off of bias vs variance for Generalized Advantage Estimator
    :param clip_range: Clipping parameter, it can be a function of the current progress
        remaining (from 1 to 0).
    :param clip_range_vf: Clipping parameter for the value function,
        it can be a function of the current progress remaining (from 1 to 0).
        If None is passed (default), no clipping will be done on the value function.
    :param normalize_advantage: Whether to normalize or not the advantage
    :param ent_coef: Entropy coefficient for the loss calculation
    :param vf_coef: Value function coefficient for the loss calculation
    :param max_grad_norm: The maximum value for the gradient clipping
    :param use_sde: Whether to use generalized State Dependent Exploration (gSDE)
        instead of action noise exploration (default: False)
    :param sde_sample_freq: Sample a new noise matrix every n steps when using gSDE
        Default: -1 (only sample at the beginning of the rollout)
    :param rollout_buffer_class: Rollout buffer class to use. If ``None``, it will be automatically selected.
    :param rollout_buffer_kwargs: Keyword arguments to pass to the rollout buffer on creation
    :param target_kl: Limit the KL divergence between updates (SB3's early stop, unchanged: an epoch
        stops when ``approx_kl > 1.5 * target_kl``). By default, there is no limit on the kl div.
        For monitoring without stopping use :class:`sb3_klppo.callbacks.TargetKLMonitor`.
    :param stats_window_size: Window size for the rollout logging, specifying the number of episodes to average
        the reported success rate, mean episode length, and mean reward over
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation
    :param verbose: Verbosity level: 0 for no output, 1 for info messages (such as device or wrappers used), 2 for
        debug messages
    :param seed: Seed for the pseudo random generators
    :param device: Device (cpu, cuda, ...) on which the code should be run.
        Setting it to auto, the code will be run on the GPU if possible.
    :param kl_coef: Weight of the penalty on ``KL(pi_old || pi_theta)``, the drift from the rollout
        policy, added to each minibatch loss (0 disables it). Callbacks may change it between updates.
    :param kl_estimator: How that KL is estimated: ``"k1_clamped"`` (``mean(logp_old - logp_new)``
        clamped at 0, default), ``"k3"`` (``mean((r - 1) - log r)``) or ``"exact"`` (analytic, from a
        snapshot of the rollout policy taken once per update before any gradient step).
    :param kl_ref_coef_initial: Weight of the exact ``KL(pi_theta || pi_ref)`` towards the reference
        policy at gradient step 0. No reference set means no term.
    :param kl_ref_coef_final: Weight of the reference KL after ``kl_ref_decay_steps`` gradient steps,
        held from then on.
    :param kl_ref_decay_steps: Number of minibatch (gradient) steps over which the reference weight
        moves linearly from initial to final; 0 applies the final weight from the start. The step
        count persists across ``learn()`` calls and save/load.
    :param entropy_min: Entropy floor in nats (summed over action dimensions): below it the
        minibatch's mean entropy is penalised. None disables the floor.
    :param entropy_min_coef: Weight of the entropy-floor hinge ``max(0, entropy_min - entropy)``.
    :param entropy_warmup_coef: Extra entropy bonus at gradient step 0, added on top of ``ent_coef``
        and fading linearly to zero over ``entropy_warmup_steps``.
    :param entropy_warmup_steps: Number of minibatch (gradient) steps over which the warm-up bonus fades.
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    """

    # SB3 declares a class's policy aliases in its body; KLPPO adds the set-structured policy to PPO's.
    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {**PPO.policy_aliases, "ReplicaSetPolicy": ReplicaSetPolicy}

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        n_steps: int = 2048,
        batch_size: int = 64,
        n_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_range: float | Schedule = 0.2,
        clip_range_vf: float | Schedule | None = None,
        normalize_advantage: bool = True,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        target_kl: float | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        kl_coef: float = 0.0,
        kl_estimator: str = DEFAULT_KL_ESTIMATOR,
        kl_ref_coef_initial: float = 0.0,
        kl_ref_coef_final: float = 0.0,
        kl_ref_decay_steps: int = 0,
        entropy_min: float | None = None,
        entropy_min_coef: float = 1.0,
        entropy_warmup_coef: float = 0.0,
        entropy_warmup_steps: int = 0,
        _init_setup_model: bool = True,
    ):
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            batch_size=batch_size,
            n_epochs=n_epochs,
            gamma=gamma,
            gae_lambda=gae_lambda,
            clip_range=clip_range,
            clip_range_vf=clip_range_vf,
            normalize_advantage=normalize_advantage,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            rollout_buffer_class=rollout_buffer_class,
            rollout_buffer_kwargs=rollout_buffer_kwargs,
            target_kl=target_kl,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=False,
        )
        _check_arguments(
            kl_coef=kl_coef,
            kl_estimator=kl_estimator,
            kl_ref_coef_initial=kl_ref_coef_initial,
            kl_ref_coef_final=kl_ref_coef_final,
            kl_ref_decay_steps=kl_ref_decay_steps,
            entropy_min=entropy_min,
            entropy_min_coef=entropy_min_coef,
            entropy_warmup_coef=entropy_warmup_coef,
            entropy_warmup_steps=entropy_warmup_steps,
        )
        self.kl_coef = float(kl_coef)
        self.kl_estimator = kl_estimator
        self.kl_ref_coef_initial = float(kl_ref_coef_initial)
        self.kl_ref_coef_final = float(kl_ref_coef_final)
        self.kl_ref_decay_steps = int(kl_ref_decay_steps)
        self.entropy_min = None if entropy_min is None else float(entropy_min)
        self.entropy_min_coef = float(entropy_min_coef)
        self.entropy_warmup_coef = float(entropy_warmup_coef)
        self.entropy_warmup_steps = int(entropy_warmup_steps)
        # Gradient steps taken by KLPPO, the clock of the reference and warm-up schedules.
        self._n_kl_updates = 0
        self.reference_policy: BasePolicy | None = None
        # Class and constructor arguments of the reference, saved so ``load`` can rebuild it.
        self._reference_spec: tuple[type[BasePolicy], dict[str, Any]] | None = None
        # Figures of the last ``train()`` call, for callbacks (see sb3_klppo.callbacks).
        self.last_update_stats: dict[str, float] | None = None

        if _init_setup_model:
            self._setup_model()

    # ----------------------------------------------------------------------------- schedules

    @property
    def kl_schedule_step(self) -> int:
        """Gradient steps taken so far: the clock of the reference-KL and warm-up schedules."""
        return self._n_kl_updates

    @property
    def ref_kl_coef(self) -> float:
        """Reference-KL weight at the current gradient step (applies only with a reference)."""
        return linear_schedule_value(
            self._n_kl_updates, self.kl_ref_coef_initial, self.kl_ref_coef_final, self.kl_ref_decay_steps
        )

    @property
    def entropy_bonus_coef(self) -> float:
        """Warm-up entropy bonus weight at the current gradient step."""
        return linear_schedule_value(self._n_kl_updates, self.entropy_warmup_coef, 0.0, self.entropy_warmup_steps)

    # ------------------------------------------------------------------------ reference policy

    def set_reference_policy(
        self, policy_or_path: BasePolicy | BaseAlgorithm | str | pathlib.Path | io.BufferedIOBase | None = None
    ) -> None:
        """Freeze a copy of a policy as the reference of the KL(pi_theta || pi_ref) term.

        :param policy_or_path: an SB3 actor-critic policy, an SB3 model (its ``.policy``), or the
            path of a saved SB3 model zip. ``None`` (default) snapshots the current policy, e.g.
            right after behaviour cloning. The copy lives on this model's device, is never trained,
            and is saved in the model zip.
        """
        if policy_or_path is None:
            source = self.policy
        elif isinstance(policy_or_path, BaseAlgorithm):
            source = policy_or_path.policy
        elif isinstance(policy_or_path, BasePolicy):
            source = policy_or_path
        elif isinstance(policy_or_path, (str, pathlib.Path, io.BufferedIOBase)):
            source = _policy_from_zip(policy_or_path, self.device)
        else:
            raise KLPPOArgumentError(
                "set_reference_policy expects an SB3 policy, an SB3 model or a model zip path, "
                f"got {type(policy_or_path).__name__}"
            )
        self._check_reference(source)
        self.reference_policy = _frozen_copy(source, self.device)
        self._reference_spec = _policy_spec(source)

    def _check_reference(self, policy: BasePolicy) -> None:
        """Reject references that cannot be compared with this model's policy state by state."""
        if not callable(getattr(policy, "get_distribution", None)):
            raise KLPPOArgumentError(
                f"reference policy {type(policy).__name__} has no get_distribution(); use an actor-critic policy"
            )
        for field in ("observation_space", "action_space"):
            theirs, ours = getattr(policy, field), getattr(self, field)
            if theirs != ours:
                raise KLPPOArgumentError(f"reference policy {field} {theirs} does not match the model's {ours}")

    # --------------------------------------------------------------------------- save / load

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        """The reference's state dict is a parameter like the policy's (``get_parameters`` and
        ``set_parameters`` carry it); :meth:`save` moves it to its own zip member."""
        state_dicts, torch_variables = super()._get_torch_save_params()
        if self.reference_policy is not None:
            state_dicts = [*state_dicts, REFERENCE_ATTR]
        return state_dicts, torch_variables

    def _excluded_save_params(self) -> list[str]:
        """The last update's figures describe a training session, not the model; the reference is
        saved as a state dict (:data:`REFERENCE_FILE`), never pickled into the data."""
        return [*super()._excluded_save_params(), "last_update_stats", REFERENCE_ATTR]

    @contextlib.contextmanager
    def _reference_detached(self) -> Iterator[BasePolicy | None]:
        """The model without its reference for the duration of the block (SB3's save then writes a
        plain PPO zip); the reference is handed to the block and put back afterwards."""
        reference, self.reference_policy = self.reference_policy, None
        try:
            yield reference
        finally:
            self.reference_policy = reference

    def save(self, path: ZipSource, exclude: list[str] | None = None, include: list[str] | None = None) -> None:
        """SB3's zip (loadable by ``PPO.load``) plus the reference's state dict in :data:`REFERENCE_FILE`.

        Paths get SB3's treatment (``.zip`` appended when there is no suffix); a buffer is written
        and left open, as SB3 does.
        """
        archive = io.BytesIO()
        with self._reference_detached() as reference:
            super().save(archive, exclude=exclude, include=include)
        if reference is not None:
            with zipfile.ZipFile(archive, mode="a") as zipped, zipped.open(REFERENCE_FILE, "w", force_zip64=True) as member:
                th.save(reference.state_dict(), member)
        file = open_path(path, "w", verbose=0, suffix="zip")
        file.write(archive.getvalue())
        if isinstance(path, (str, pathlib.Path)):
            file.close()

    @classmethod
    def load(  # type: ignore[override]
        cls: type[SelfKLPPO],
        path: ZipSource,
        env: GymEnv | None = None,
        device: th.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        **kwargs: Any,
    ) -> SelfKLPPO:
        """SB3's ``load``, then the reference's weights from :data:`REFERENCE_FILE` (zips saved before
        that member existed carry ``reference_policy.pth``, which SB3's ``load`` restores itself)."""
        path, again = _readable_twice(path)
        model = super().load(path, env, device, custom_objects, print_system_info, force_reset, **kwargs)
        state = _reference_state(again, model.device)
        if state is not None:
            model.set_parameters({REFERENCE_ATTR: state}, exact_match=False, device=model.device)
        return model

    def set_parameters(
        self,
        load_path_or_dict: ZipSource | TensorDict,
        exact_match: bool = True,
        device: th.device | str = "auto",
    ) -> None:
        """SB3's ``set_parameters``, also accepting a reference policy when this model has none yet.

        The reference is built on demand (a loaded model has only its saved architecture, the
        ``_reference_spec``, until its weights arrive); its architecture comes from the zip, else
        from this model's saved spec, else it is assumed to be this model's policy's.
        """
        if isinstance(load_path_or_dict, dict):
            params, spec = load_path_or_dict, None
        else:
            source, again = _readable_twice(load_path_or_dict)
            data, params, _ = load_from_zip_file(source, device=device)
            spec = (data or {}).get("_reference_spec")
            state = _reference_state(again, device)
            if state is not None:
                params = {**params, REFERENCE_ATTR: state}
        if REFERENCE_ATTR in params and self.reference_policy is None:
            self._reference_spec = spec or self._reference_spec or _policy_spec(self.policy)
            self.reference_policy = _build_frozen(self._reference_spec, self.device)
        super().set_parameters(params, exact_match=exact_match, device=device)

    # ---------------------------------------------------------------------------------- train

    def _rollout_policy_snapshot(self) -> BasePolicy | None:
        """Frozen copy of the rollout policy, needed only by the exact KL estimator."""
        if self.kl_coef > 0 and self.kl_estimator == "exact":
            return _frozen_copy(self.policy, self.device)
        return None

    def _regularisation(
        self,
        observations: th.Tensor,
        old_log_prob: th.Tensor,
        log_prob: th.Tensor,
        entropy: th.Tensor | None,
        rollout_policy: BasePolicy | None,
    ) -> tuple[th.Tensor | None, dict[str, float]]:
        """KLPPO's extra loss terms on one minibatch, and their figures for logging.

        Returns ``None`` as the loss when every term is off, so PPO's loss is left untouched.
        """
        terms: list[th.Tensor] = []
        current_dist: Distribution | None = None

        def policy_distribution() -> Distribution:
            nonlocal current_dist
            if current_dist is None:
                current_dist = self.policy.get_distribution(observations)
            return current_dist

        stats = {"kl_penalty": 0.0, "ref_kl": math.nan, "entropy_penalty": 0.0}
        if self.kl_coef > 0:
            old_dist = new_dist = None
            if rollout_policy is not None:
                with th.no_grad():
                    old_dist = rollout_policy.get_distribution(observations)
                new_dist = policy_distribution()
            kl = kl_penalty(old_log_prob, log_prob, self.kl_estimator, old_dist, new_dist)
            terms.append(self.kl_coef * kl)
            stats["kl_penalty"] = self.kl_coef * kl.item()

        ref_coef = self.ref_kl_coef
        stats["ref_kl_coef"] = ref_coef
        if self.reference_policy is not None:
            with th.no_grad():
                ref_dist = self.reference_policy.get_distribution(observations)
            with th.set_grad_enabled(ref_coef > 0):
                ref_kl = reference_kl(policy_distribution(), ref_dist)
            if ref_coef > 0:
                terms.append(ref_coef * ref_kl)
            stats["ref_kl"] = ref_kl.item()

        # Monte-Carlo entropy estimate where there is no closed form, as in SB3's PPO.
        entropy = -log_prob if entropy is None else entropy
        stats["entropy"] = entropy.mean().item()
        if self.entropy_min is not None and self.entropy_min_coef > 0:
            floor = entropy_floor_penalty(entropy, self.entropy_min, self.entropy_min_coef)
            terms.append(floor)
            stats["entropy_penalty"] = floor.item()
        bonus_coef = self.entropy_bonus_coef
        stats["entropy_warmup_coef"] = bonus_coef
        if bonus_coef > 0:
            terms.append(-bonus_coef * entropy.mean())

        loss = th.stack(terms).sum() if terms else None
        return loss, stats

    def train(self) -> None:
        """
        Update policy using the currently gathered rollout buffer.

        Copied from ``stable_baselines3.ppo.ppo.PPO.train`` of stable-baselines3 2.9.2 (as
        sb3-contrib's MaskablePPO copies it); the lines that differ are marked ``# KLPPO:``:
        the reference snapshot before the epochs, :meth:`_regularisation`'s terms added to each
        minibatch loss, the gradient-step clock after each optimizer step, and the extra figures
        logged at the end. Everything else is SB3's code, comments included, so a diff against a
        newer SB3 release shows what to carry over (``tests/test_klppo.py`` checks that with
        every KLPPO term off the update equals PPO's bit for bit, and that only marked lines differ).
        """
        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)
        # Update optimizer learning rate
        self._update_learning_rate(self.policy.optimizer)
        # Compute current clip range
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        # Optional: clip range for the value function
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]
        # KLPPO: snapshot of pi_old for the exact KL estimator, before any gradient step
        rollout_policy = self._rollout_policy_snapshot()

        entropy_losses = []
        pg_losses, value_losses = [], []
        clip_fractions = []
        extra_stats: list[dict[str, float]] = []  # KLPPO: per-minibatch figures of the extra terms

        continue_training = True
        # train for n_epochs epochs
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            # Do a complete pass on the rollout buffer
            for rollout_data in self.rollout_buffer.get(self.batch_size):
                actions = rollout_data.actions
                if isinstance(self.action_space, spaces.Discrete):
                    # Convert discrete action from float to long
                    actions = rollout_data.actions.long().flatten()

                values, log_prob, entropy = self.policy.evaluate_actions(rollout_data.observations, actions)
                values = values.flatten()
                # Normalize advantage
                advantages = rollout_data.advantages
                # Normalization does not make sense if mini batchsize == 1, see GH issue #325
                if self.normalize_advantage and len(advantages) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

                # ratio between old and new policy, should be one at the first iteration
                ratio = th.exp(log_prob - rollout_data.old_log_prob)

                # clipped surrogate loss
                policy_loss_1 = advantages * ratio
                policy_loss_2 = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
                policy_loss = -th.min(policy_loss_1, policy_loss_2).mean()

                # Logging
                pg_losses.append(policy_loss.item())
                clip_fraction = th.mean((th.abs(ratio - 1) > clip_range).float()).item()
                clip_fractions.append(clip_fraction)

                if self.clip_range_vf is None:
                    # No clipping
                    values_pred = values
                else:
                    # Clip the difference between old and new value
                    # NOTE: this depends on the reward scaling
                    values_pred = rollout_data.old_values + th.clamp(
                        values - rollout_data.old_values, -clip_range_vf, clip_range_vf
                    )
                # Value loss using the TD(gae_lambda) target
                value_loss = F.mse_loss(rollout_data.returns, values_pred)
                value_losses.append(value_loss.item())

                # Entropy loss favor exploration
                if entropy is None:
                    # Approximate entropy when no analytical form
                    entropy_loss = -th.mean(-log_prob)
                else:
                    entropy_loss = -th.mean(entropy)

                entropy_losses.append(entropy_loss.item())

                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss

                # KLPPO: KL penalties, reference KL, entropy floor and warm-up bonus (the next 6 lines)
                extra_loss, stats = self._regularisation(
                    rollout_data.observations, rollout_data.old_log_prob, log_prob, entropy, rollout_policy
                )
                extra_stats.append(stats)
                if extra_loss is not None:
                    loss = loss + extra_loss

                # Calculate approximate form of reverse KL Divergence for early stopping
                # see issue #417: https://github.com/DLR-RM/stable-baselines3/issues/417
                # and discussion in PR #419: https://github.com/DLR-RM/stable-baselines3/pull/419
                # and Schulman blog: http://joschu.net/blog/kl-approx.html
                with th.no_grad():
                    log_ratio = log_prob - rollout_data.old_log_prob
                    approx_kl_div = th.mean((th.exp(log_ratio) - 1) - log_ratio).cpu().numpy()
                    approx_kl_divs.append(approx_kl_div)

                if self.target_kl is not None and approx_kl_div > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl_div:.2f}")
                    break

                # Optimization step
                self.policy.optimizer.zero_grad()
                loss.backward()
                # Clip grad norm
                th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()
                self._n_kl_updates += 1  # KLPPO: the clock of the reference and warm-up schedules

            self._n_updates += 1
            if not continue_training:
                break

        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())

        # Logs
        self.logger.record("train/entropy_loss", np.mean(entropy_losses))
        self.logger.record("train/policy_gradient_loss", np.mean(pg_losses))
        self.logger.record("train/value_loss", np.mean(value_losses))
        self.logger.record("train/approx_kl", np.mean(approx_kl_divs))
        self.logger.record("train/clip_fraction", np.mean(clip_fractions))
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_var)
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if self.clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)
        # KLPPO: the extra figures, logged and kept for callbacks
        self._record_update_stats(extra_stats, float(np.mean(approx_kl_divs)), float(np.mean(clip_fractions)))

    def _record_update_stats(self, extra_stats: list[dict[str, float]], approx_kl: float, clip_fraction: float) -> None:
        """Log KLPPO's figures (minibatch means) and keep them in ``last_update_stats`` for callbacks."""
        summary = {key: float(np.mean([s[key] for s in extra_stats])) for key in extra_stats[0]}
        summary["kl_coef"] = self.kl_coef
        for key in LOGGED_STATS:
            self.logger.record(f"train/{key}", summary[key])
        self.logger.record("train/kl_schedule_step", self._n_kl_updates, exclude="tensorboard")
        self.last_update_stats = {
            **summary,
            "approx_kl": approx_kl,
            "clip_fraction": clip_fraction,
            "n_updates": float(self._n_updates),
            "kl_schedule_step": float(self._n_kl_updates),
        }


def _check_arguments(
    *,
    kl_coef: float,
    kl_estimator: str,
    kl_ref_coef_initial: float,
    kl_ref_coef_final: float,
    kl_ref_decay_steps: int,
    entropy_min: float | None,
    entropy_min_coef: float,
    entropy_warmup_coef: float,
    entropy_warmup_steps: int,
) -> None:
    """Reject invalid KLPPO arguments by name; warn about settings that silently do nothing."""
    if kl_estimator not in KL_ESTIMATORS:
        raise KLPPOArgumentError(f"kl_estimator must be one of {tuple(KL_ESTIMATORS)}, got {kl_estimator!r}")
    non_negative = {
        "kl_coef": kl_coef,
        "kl_ref_coef_initial": kl_ref_coef_initial,
        "kl_ref_coef_final": kl_ref_coef_final,
        "kl_ref_decay_steps": kl_ref_decay_steps,
        "entropy_min_coef": entropy_min_coef,
        "entropy_warmup_coef": entropy_warmup_coef,
        "entropy_warmup_steps": entropy_warmup_steps,
    }
    for name, value in non_negative.items():
        if not math.isfinite(value) or value < 0:
            raise KLPPOArgumentError(f"{name} must be a finite number >= 0, got {value!r}")
    if entropy_min is not None and not math.isfinite(entropy_min):
        raise KLPPOArgumentError(f"entropy_min must be a finite number of nats or None, got {entropy_min!r}")
    if kl_ref_decay_steps == 0 and kl_ref_coef_initial != kl_ref_coef_final:
        warnings.warn(
            f"kl_ref_coef_initial={kl_ref_coef_initial} is never used because kl_ref_decay_steps=0: "
            f"the reference-KL weight is kl_ref_coef_final={kl_ref_coef_final} from the first step",
            stacklevel=3,
        )
    if entropy_warmup_coef > 0 and entropy_warmup_steps == 0:
        warnings.warn("entropy_warmup_coef has no effect because entropy_warmup_steps=0", stacklevel=3)
