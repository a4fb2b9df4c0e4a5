"""The router interface every routing policy implements, and the tie rules (Vidur's, and random).

Kept apart from the registry (:mod:`vidur_env.routers`) so that router families in other
modules (:mod:`vidur_env.cache_routers`) build on it without importing the registry back.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vidur_env.observation import ObservationView, ReplicaCosts

if TYPE_CHECKING:
    from vidur_env.cluster import ClusterSimulator
    from vidur_env.replica import Replica


class Router:
    """Base class: stateless routers only implement :meth:`choose`."""

    name = "base"

    def reset(self, num_replicas: int, rng: np.random.Generator) -> None:
        """Start a new episode on a cluster of ``num_replicas`` replicas."""
        self.num_replicas = num_replicas
        self.rng = rng
        self.costs_by_model: dict[int, ReplicaCosts] = {}

    def replica_costs(self, replica: "Replica") -> ReplicaCosts:
        """The per-token costs of ``replica``'s time model (computed once per model)."""
        costs = self.costs_by_model.get(id(replica.time_model))
        if costs is None:
            costs = self.costs_by_model[id(replica.time_model)] = ReplicaCosts.from_time_model(replica.time_model)
        return costs

    def choose(self, sim: "ClusterSimulator", rid: int) -> int:
        """The replica for request ``rid``, from the simulator's public state."""
        raise NotImplementedError

    def choose_observed(self, view: ObservationView, row: int) -> int:
        """The replica for env ``row`` of a batch of de-normalised observations."""
        raise NotImplementedError

    def __call__(self, sim: "ClusterSimulator", rid: int) -> int:
        return self.choose(sim, rid)


def argmin_first(scores: list[float] | list[int]) -> int:
    """Index of the smallest score, ties to the lowest index (Vidur's tie rule)."""
    best = 0
    for i in range(1, len(scores)):
        if scores[i] < scores[best]:
            best = i
    return best


TIE_TOLERANCE = 1e-5
"""Scores within this fraction of the least one tie: about the float32 resolution of the
decoded observation, so that a router ties alike on the simulator and on observations."""


def argmin_random(scores: "list[float] | np.ndarray", rng: np.random.Generator) -> int:
    """Index of the smallest score, ties (within :data:`TIE_TOLERANCE`) broken uniformly with
    ``rng``; the generator is drawn only when there is a tie, so runs are reproducible by seed."""
    scores = np.asarray(scores, dtype=np.float64)
    least = scores.min()
    tied = np.flatnonzero(scores <= least + TIE_TOLERANCE * abs(least))
    return int(tied[0]) if tied.size == 1 else int(rng.choice(tied))
