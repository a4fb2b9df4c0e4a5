"""The router interface every routing policy implements, and the tie rules (Vidur's, and random).

Kept apart from the registry (:mod:`vidur_env.routers`) so that router families in other
modules (:mod:`vidur_env.cache_routers`) build on it without importing the registry back.
"""
from __future__ import annotations

from math import inf
from typing import TYPE_CHECKING, Callable

import numpy as np
from sortedcontainers import SortedList

from vidur_env.observation import ObservationView, ReplicaCosts

if TYPE_CHECKING:
    from vidur_env.cluster import ClusterSimulator
    from vidur_env.replica import Replica


class Router:
    """Base class: stateless routers only implement :meth:`choose`."""

    name = "base"
    live: bool = False
    """Decides from the live simulator even in the env (the evaluation harness then calls
    :meth:`choose`, not :meth:`choose_observed`): routers that keep state the observation does
    not carry, such as their own cache view. They need fresh observations to be compared fairly."""
    quiet: str | None = None
    """Which replicas the cluster may leave quiet (unadvanced, :mod:`vidur_env.cluster`) while
    this router decides on the simulator: ``"steady"``, those whose load counts cannot change
    (the router reads only ``num_waiting``, ``waiting_prompt_tokens``,
    ``num_allocated_requests`` and ``time_model``, which a quiet replica keeps exact, or wakes
    with :meth:`~vidur_env.cluster.ClusterSimulator.wake` each quiet replica whose other state
    it needs); ``"any"``, every replica until it gets a request (the router wakes each replica
    it reads); None, none. Must not change any decision: a subclass that reads more than its
    base class must set it back."""
    indexed: bool = True
    """Decide from incrementally kept scores (:class:`ScoreIndex`) where the router has them;
    turning it off (score every replica at every decision) must not change any decision."""

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


class ScoreIndex:
    """Each replica's score, kept current by rescoring only the replicas the cluster lists as
    changed since the last look (``sim.round`` / ``sim.changed``), in a sorted list of
    (score, replica id): the least score, ties to the lowest index, and the replicas tied
    within a limit cost O(changed * log N) (plus the ties themselves) per decision instead of a
    scan. Anything the index cannot follow (another simulator, a stand-in without a change log,
    a skipped dispatch) rescores every replica, so it is exact as long as ``score`` depends
    only on the replica's state."""

    def __init__(self, score: Callable[["Replica"], float], grows_while_quiet: bool = False) -> None:
        self.score = score
        self.grows_while_quiet = grows_while_quiet
        """The score reads state a quiet replica does not keep current, and that state only
        makes it grow: a quiet replica's score is then a lower bound, and :meth:`first` wakes
        the replica it would pick until that one is not quiet (only :meth:`first` allows it)."""
        self.sim: "ClusterSimulator | None" = None

    def sync(self, sim: "ClusterSimulator") -> None:
        """Bring the scores up to date with ``sim``."""
        round_ = getattr(sim, "round", None)  # None: a stand-in without a change log
        if sim is not self.sim or round_ is None or round_ - self.round not in (0, 1):
            self.sim = sim
            self.scores = [self.score(r) for r in sim.replicas]
            self.order = SortedList((value, i) for i, value in enumerate(self.scores))
        else:
            # the list last read may have grown after the look; a dispatch starts a new one
            fresh = self.log[self.seen:] + (sim.changed if round_ != self.round else [])
            scores, order, replicas = self.scores, self.order, sim.replicas
            for i in fresh:
                value = self.score(replicas[i])
                if value != scores[i]:
                    order.remove((scores[i], i))
                    order.add((value, i))
                    scores[i] = value
        self.log: list[int] = getattr(sim, "changed", [])
        self.round, self.seen = round_, len(self.log)

    def first(self) -> int:
        """The replica with the least score, ties to the lowest index (as :func:`argmin_first`)."""
        order = self.order
        if self.grows_while_quiet:
            sim = self.sim
            quiet = getattr(sim, "quiet", ())
            while order[0][1] in quiet:
                # its true score is at least the bound, which is least: wake it and rescore
                i = order[0][1]
                sim.wake(i)
                value = self.score(sim.replicas[i])
                order.remove((self.scores[i], i))
                order.add((value, i))
                self.scores[i] = value
        return order[0][1]

    def least(self) -> float:
        """The least score."""
        return self.order[0][0]

    def count_at_most(self, limit: float, offset: float = 0.0) -> int:
        """How many replicas have ``score + offset <= limit``, computed on those very floats (a
        bisection on ``limit - offset`` corrected by the exact test at its edge)."""
        order = self.order
        k = order.bisect_right((limit - offset, inf))
        while k < len(order) and order[k][0] + offset <= limit:
            k += 1
        while k > 0 and order[k - 1][0] + offset > limit:
            k -= 1
        return k

    def at_most(self, limit: float, offset: float = 0.0) -> list[int]:
        """Replicas whose ``score + offset <= limit`` (see :meth:`count_at_most`)."""
        return [i for _, i in self.order.islice(0, self.count_at_most(limit, offset))]

    def ascending_ids(self, k: int) -> bool:
        """Whether the ``k`` least-scored replicas all score the same, so that they are in the
        order of their ids and :meth:`nth` reads the sorted list of their ids in O(log N)."""
        order = self.order
        return order[0][0] == order[k - 1][0]

    def nth(self, j: int) -> int:
        """The replica ``j``-th in (score, id) order."""
        return self.order[j][1]
