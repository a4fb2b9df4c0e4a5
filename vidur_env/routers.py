"""Routing policies (Vidur's "global schedulers") and the registry that names them.

A router is called once per arriving request with the simulator advanced to the arrival
time, and returns a replica id. Routers read replica state only through the public
attributes documented on :class:`vidur_env.cluster.ClusterSimulator`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

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


class RoundRobin(Router):
    """Request i goes to replica i mod N (Vidur's default)."""

    name = "round_robin"

    def reset(self, num_replicas: int, rng: np.random.Generator) -> None:
        super().reset(num_replicas, rng)
        self.counter = 0

    def choose(self, sim: "ClusterSimulator", rid: int) -> int:
        choice = self.counter % self.num_replicas
        self.counter += 1
        return choice


class RandomRouter(Router):
    """Uniformly random replica, drawn from the episode's generator."""

    name = "random"

    def choose(self, sim: "ClusterSimulator", rid: int) -> int:
        return int(self.rng.integers(self.num_replicas))


class LeastOutstandingRequests(Router):
    """Vidur's ``lor``: fewest requests *waiting* in the replica's queue (running ones are
    not counted, which skews load at moderate rates)."""

    name = "lor"

    def choose(self, sim: "ClusterSimulator", rid: int) -> int:
        return argmin_first([r.num_waiting for r in sim.replicas])


ROUTERS: dict[str, type[Router]] = {cls.name: cls for cls in (RoundRobin, RandomRouter, LeastOutstandingRequests)}


def make_router(name: str) -> Router:
    """A fresh router by registry name; the error lists the valid names."""
    try:
        return ROUTERS[name]()
    except KeyError:
        raise ValueError(f"unknown router {name!r}; choose from {', '.join(sorted(ROUTERS))}") from None
