"""The router interface every routing policy implements, and Vidur's tie rule.

Kept apart from the registry (:mod:`vidur_env.routers`) so that router families in other
modules (:mod:`vidur_env.cache_routers`) build on it without importing the registry back.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vidur_env.observation import ObservationView

if TYPE_CHECKING:
    from vidur_env.cluster import ClusterSimulator


class Router:
    """Base class: stateless routers only implement :meth:`choose`."""

    name = "base"

    def reset(self, num_replicas: int, rng: np.random.Generator) -> None:
        """Start a new episode on a cluster of ``num_replicas`` replicas."""
        self.num_replicas = num_replicas
        self.rng = rng

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
