"""A policy for set-structured choices: pick one of N rows of an (N, F) observation.

Routing picks one replica out of N, and each replica is described by one observation row. An MLP
on the flattened observation learns a separate weight for "replica 3's queue" and "replica 4's
queue", and cannot be reused on a cluster of another size. :class:`ReplicaSetPolicy` instead
scores every row with the same weights (a Deep Sets encoder), so

- the logits are permutation-equivariant: permuting the rows permutes the logits;
- the value is permutation-invariant: it reads a mean + max pooling of the row embeddings;
- the same weights serve any N (the networks never see N; SB3's spaces fix it per model only).

``KLPPO("ReplicaSetPolicy", env)`` works through KLPPO's own ``policy_aliases``; plain PPO takes
the class itself. :class:`sb3_klppo.maskable.MaskableReplicaSetPolicy` is the same network for
sb3-contrib's MaskablePPO.
"""

from __future__ import annotations

from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from sb3_klppo.errors import ConfigError


DEFAULT_NET_ARCH: dict[str, list[int]] = {"pi": [64, 64], "vf": [64, 64]}


class ReplicaSetPolicyError(ConfigError):
    """The spaces or the architecture do not fit a set-structured policy; the message says which."""


def row_mlp(in_dim: int, sizes: list[int], activation_fn: type[nn.Module]) -> tuple[nn.Sequential, int]:
    """An MLP applied to the last axis, so it maps ``(..., N, in_dim)`` rows independently."""
    layers: list[nn.Module] = []
    for size in sizes:
        layers += [nn.Linear(in_dim, size), activation_fn()]
        in_dim = size
    return nn.Sequential(*layers), in_dim


def pool_rows(rows: th.Tensor) -> th.Tensor:
    """Mean and max over the row axis of ``(B, N, H)``: an order-free summary ``(B, 2H)``."""
    return th.cat([rows.mean(dim=-2), rows.amax(dim=-2)], dim=-1)


class RowsExtractor(BaseFeaturesExtractor):
    """Keeps the ``(B, N, F)`` layout (SB3's default would flatten it); ``features_dim`` is F."""

    def __init__(self, observation_space: spaces.Box) -> None:
        super().__init__(observation_space, features_dim=observation_space.shape[-1])

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return observations


class ReplicaSetExtractor(nn.Module):
    """Actor and critic trunks over rows, in the place of SB3's ``MlpExtractor``.

    Actor: a per-row MLP, then one equivariant "context" layer that sees each row next to the
    pooled summary of all rows (so a score can depend on how a replica compares with the rest),
    giving ``(B, N, latent_dim_pi)``. Critic: its own per-row MLP, pooled to ``(B, latent_dim_vf)``.
    """

    def __init__(self, feature_dim: int, net_arch: dict[str, list[int]], activation_fn: type[nn.Module]) -> None:
        super().__init__()
        self.policy_net, row_dim = row_mlp(feature_dim, net_arch["pi"], activation_fn)
        self.context_net = nn.Sequential(nn.Linear(3 * row_dim, row_dim), activation_fn())
        self.value_rows, value_dim = row_mlp(feature_dim, net_arch["vf"], activation_fn)
        self.latent_dim_pi = row_dim
        self.latent_dim_vf = 2 * value_dim

    def forward(self, features: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features: th.Tensor) -> th.Tensor:
        rows = self.policy_net(features)
        context = pool_rows(rows).unsqueeze(-2).expand(*rows.shape[:-1], -1)
        return self.context_net(th.cat([rows, context], dim=-1))

    def forward_critic(self, features: th.Tensor) -> th.Tensor:
        return pool_rows(self.value_rows(features))


class RowScorer(nn.Module):
    """One logit per row from its latent: ``(B, N, H) -> (B, N)`` with shared weights."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(latent_dim, 1)

    def forward(self, latent_rows: th.Tensor) -> th.Tensor:
        return self.score(latent_rows).squeeze(-1)


def _row_net_arch(net_arch: list[int] | dict[str, list[int]] | None) -> dict[str, list[int]]:
    """SB3's ``net_arch`` forms (a list shared by both trunks, or ``dict(pi=..., vf=...)``)."""
    if net_arch is None:
        return {key: list(sizes) for key, sizes in DEFAULT_NET_ARCH.items()}
    if isinstance(net_arch, dict):
        missing = {"pi", "vf"} - set(net_arch)
        if missing:
            raise ReplicaSetPolicyError(f"net_arch dict needs keys 'pi' and 'vf'; missing {sorted(missing)}")
        arch = {"pi": list(net_arch["pi"]), "vf": list(net_arch["vf"])}
    else:
        arch = {"pi": list(net_arch), "vf": list(net_arch)}
    if not arch["pi"] or not arch["vf"]:
        raise ReplicaSetPolicyError(f"net_arch needs at least one hidden layer per trunk, got {net_arch!r}")
    return arch


class ReplicaSetLayout:
    """The set-structured networks, mixed into an SB3 actor-critic policy class (the plain one
    here, sb3-contrib's maskable one in :mod:`sb3_klppo.maskable`): the spaces check, the row
    trunks in place of ``MlpExtractor``, a per-row scorer as ``action_net``, and :meth:`row_logits`.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        features_extractor_class: type[BaseFeaturesExtractor] = RowsExtractor,
        **kwargs: Any,
    ) -> None:
        _check_spaces(observation_space, action_space)
        super().__init__(  # type: ignore[call-arg]
            observation_space,
            action_space,
            lr_schedule,
            net_arch=_row_net_arch(net_arch),
            activation_fn=activation_fn,
            features_extractor_class=features_extractor_class,
            **kwargs,
        )

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = ReplicaSetExtractor(self.features_dim, self.net_arch, self.activation_fn)

    def _build(self, lr_schedule: Schedule) -> None:
        """SB3's ``_build`` with a per-row scorer as ``action_net`` instead of ``Linear(latent, N)``."""
        self._build_mlp_extractor()
        self.action_net = RowScorer(self.mlp_extractor.latent_dim_pi)
        self.value_net = nn.Linear(self.mlp_extractor.latent_dim_vf, 1)
        if self.ortho_init:
            # SB3's gains: sqrt(2) for trunks, small for the action head, 1 for the value head.
            module_gains = {self.mlp_extractor: 2**0.5, self.action_net: 0.01, self.value_net: 1.0}
            for module, gain in module_gains.items():
                module.apply(lambda m, g=gain: self.init_weights(m, gain=g))
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def row_logits(self, obs: th.Tensor) -> th.Tensor:
        """Logits ``(B, N)`` for a batch ``(B, N, F)`` of any N (the networks are size-free)."""
        features = BasePolicy.extract_features(self, obs, self.pi_features_extractor)
        return self.action_net(self.mlp_extractor.forward_actor(features))


class ReplicaSetPolicy(ReplicaSetLayout, ActorCriticPolicy):
    """Actor-critic policy choosing one row of an ``(N, F)`` Box observation (a ``Discrete(N)`` action).

    A shared per-row MLP encodes each row; the actor adds one equivariant context layer and
    scores each row with the same linear head (one logit per row); the critic pools its row
    embeddings (mean + max) into the value. Everything else (distributions, saving, ``predict``,
    ``evaluate_actions``) is SB3's :class:`ActorCriticPolicy`.

    :param observation_space: Box of shape ``(N, F)``: one row per choice.
    :param action_space: ``Discrete(N)``: the chosen row.
    :param lr_schedule: Learning rate schedule (could be constant)
    :param net_arch: Hidden sizes of the per-row MLPs: a list for both trunks, or
        ``dict(pi=[...], vf=[...])``; default ``dict(pi=[64, 64], vf=[64, 64])``.
    :param activation_fn: Activation function
    :param kwargs: Any other :class:`ActorCriticPolicy` argument (``ortho_init``, optimizer, ...).
    """


def _check_spaces(observation_space: spaces.Space, action_space: spaces.Space) -> None:
    """The policy needs rows to score and one action per row."""
    if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 2:
        raise ReplicaSetPolicyError(f"ReplicaSetPolicy needs a Box observation of shape (N, F), got {observation_space}")
    if not isinstance(action_space, spaces.Discrete) or action_space.n != observation_space.shape[0]:
        raise ReplicaSetPolicyError(
            f"ReplicaSetPolicy needs a Discrete(N) action with N = {observation_space.shape[0]} rows, got {action_space}"
        )
