"""Routing policies (Vidur's "global schedulers") and the registry that names them (which also
holds the cache-aware routers of :mod:`vidur_env.cache_routers`).

A router is called once per arriving request with the simulator advanced to the arrival
time, and returns a replica id. Routers read replica state only through the public
attributes documented on :class:`vidur_env.cluster.ClusterSimulator` (and a replica's
``time_model``, for the work estimate). Each router can also decide from the env's
observation (:meth:`Router.choose_observed`), which :class:`RouterPolicy` wraps in SB3's
``predict`` interface.
"""
from __future__ import annotations

from math import inf
from typing import TYPE_CHECKING, Callable

import numpy as np

from vidur_env.cache_routers import CACHE_ROUTERS
from vidur_env.errors import ConfigError
from vidur_env.observation import (
    EXPECTED_OUTPUT_TOKENS, ObservationView, decode_observation, queued_work_seconds, request_seconds,
)
from vidur_env.router_base import TIE_TOLERANCE, Router, ScoreIndex, argmin_first, argmin_random

if TYPE_CHECKING:
    from vidur_env.cluster import ClusterSimulator
    from vidur_env.replica import Replica


class RoundRobin(Router):
    """Request i goes to replica i mod N (Vidur's default)."""

    name = "round_robin"
    quiet = "any"

    def reset(self, num_replicas: int, rng: np.random.Generator) -> None:
        super().reset(num_replicas, rng)
        self.counter = 0

    def _next(self) -> int:
        choice = self.counter % self.num_replicas
        self.counter += 1
        return choice

    def choose(self, sim: "ClusterSimulator", rid: int) -> int:
        return self._next()

    def choose_observed(self, view: ObservationView, row: int) -> int:
        return self._next()


class RandomRouter(Router):
    """Uniformly random replica, drawn from the episode's generator."""

    name = "random"
    quiet = "any"

    def choose(self, sim: "ClusterSimulator", rid: int) -> int:
        return int(self.rng.integers(self.num_replicas))

    def choose_observed(self, view: ObservationView, row: int) -> int:
        return int(self.rng.integers(self.num_replicas))


class ScoreRouter(Router):
    """A router that sends the request to the replica with the lowest score, ties to the lowest
    index. Subclasses define the score twice, on the simulator's public replica attributes
    (:meth:`score`) and on de-normalised observations (:meth:`observed_scores`); the two agree
    whenever the observation is fresh (``obs_refresh_ms=0``), up to float32 resolution.
    On the simulator the scores are kept in a :class:`ScoreIndex` (only changed replicas are
    rescored), so the score must depend only on the replica's state."""

    grows_while_quiet: bool = False
    """The score only grows while a replica is quiet (see :class:`ScoreIndex`)."""

    def reset(self, num_replicas: int, rng: np.random.Generator) -> None:
        super().reset(num_replicas, rng)
        self.index = ScoreIndex(self.score, self.grows_while_quiet)

    def score(self, replica: "Replica") -> float:
        raise NotImplementedError

    def observed_scores(self, view: ObservationView, row: int) -> np.ndarray:
        raise NotImplementedError

    def choose(self, sim: "ClusterSimulator", rid: int) -> int:
        if not self.indexed:
            return argmin_first([self.score(r) for r in sim.replicas])
        self.index.sync(sim)
        return self.index.first()

    def choose_observed(self, view: ObservationView, row: int) -> int:
        return int(np.argmin(self.observed_scores(view, row)))


class LeastOutstandingRequests(ScoreRouter):
    """Vidur's ``lor``: fewest requests *waiting* in the replica's queue (running ones are
    not counted, which skews load at moderate rates). Score: ``num_waiting``."""

    name = "lor"
    quiet = "steady"

    def score(self, replica: "Replica") -> float:
        return replica.num_waiting

    def observed_scores(self, view: ObservationView, row: int) -> np.ndarray:
        return view.waiting[row]


class JoinShortestQueue(ScoreRouter):
    """Join the shortest queue, counting every request the replica has not finished.
    Score: ``num_waiting + num_allocated_requests`` (queued plus holding KV, which includes the
    batch in flight)."""

    name = "jsq"
    quiet = "steady"

    def score(self, replica: "Replica") -> float:
        return replica.num_waiting + replica.num_allocated_requests

    def observed_scores(self, view: ObservationView, row: int) -> np.ndarray:
        return view.waiting[row] + view.running[row]


class VLLMDataParallel(ScoreRouter):
    """vLLM's data-parallel load balancer: a queued request weighs four running ones.
    Score: ``4 * num_waiting + num_allocated_requests``."""

    name = "vllm_dp"
    quiet = "steady"

    def score(self, replica: "Replica") -> float:
        return 4 * replica.num_waiting + replica.num_allocated_requests

    def observed_scores(self, view: ObservationView, row: int) -> np.ndarray:
        return 4 * view.waiting[row] + view.running[row]


class LeastKV(ScoreRouter):
    """Lowest KV-cache utilisation. Score: ``allocated_blocks / num_blocks``."""

    name = "least_kv"
    grows_while_quiet = True  # a quiet replica only takes blocks (its decodes grow)

    @property
    def quiet(self) -> str | None:
        return "steady" if self.indexed else None  # the scan reads every replica's KV

    def score(self, replica: "Replica") -> float:
        return replica.kv_utilization

    def observed_scores(self, view: ObservationView, row: int) -> np.ndarray:
        return view.kv_utilization[row]


class LeastWorkLeft(ScoreRouter):
    """Least estimated work queued: queued prompt tokens to prefill plus the decode load of every
    request queued or holding KV, in seconds of the replica's own time model (so a slower
    replica's queue weighs more). Score: :func:`vidur_env.observation.queued_work_seconds`,
    which uses ``waiting_prompt_tokens``, ``num_waiting``, ``num_allocated_requests`` and
    ``time_model``, never a request's output length."""

    name = "least_work_left"
    quiet = "steady"

    def score(self, replica: "Replica") -> float:
        return queued_work_seconds(replica, self.replica_costs(replica))

    def observed_scores(self, view: ObservationView, row: int) -> np.ndarray:
        return view.queued_work[row]


class SpeedAwareLeastWorkLeft(Router):
    """Least work left, counting the incoming request too: the replica where queued work plus
    the request's own estimated service time is least, both in that replica's seconds (from
    its time model), so a long prompt goes where it is cheap and a slow replica's queue weighs
    more. Score: :func:`~vidur_env.observation.queued_work_seconds` +
    :func:`~vidur_env.observation.request_seconds` of the request (its prompt, and
    ``EXPECTED_OUTPUT_TOKENS`` as output unless ``oracle=True``, which uses its true output;
    on observations, the env's ``request_cost`` column, which follows the env's ``oracle``).
    Ties are broken at random with the router's generator (:func:`argmin_random`)."""

    name = "speed_aware_lwl"
    quiet = "steady"

    def __init__(self, oracle: bool = False) -> None:
        self.oracle = oracle

    def reset(self, num_replicas: int, rng: np.random.Generator) -> None:
        super().reset(num_replicas, rng)
        self.groups: dict[int, ScoreIndex] = {}
        """Per time model (the request's cost is the same on all its replicas): the replicas'
        queued work, indexed; replicas of other models score +inf in a group's index."""
        self.grouped_sim: "ClusterSimulator | None" = None

    def choose(self, sim: "ClusterSimulator", rid: int) -> int:
        prompt = sim.table.orig_prefill[rid]
        output = sim.table.orig_decode[rid] if self.oracle else EXPECTED_OUTPUT_TOKENS
        if not self.indexed:
            scores = []
            for replica in sim.replicas:
                costs = self.replica_costs(replica)
                scores.append(queued_work_seconds(replica, costs) + request_seconds(prompt, output, costs))
            return argmin_random(scores, self.rng)
        if sim is not self.grouped_sim:
            self._group(sim)
        offsets = []
        for model, index in self.groups.items():
            index.sync(sim)
            offsets.append((index, request_seconds(prompt, output, self.costs_by_model[model])))
        least = min(index.least() + offset for index, offset in offsets)
        limit = least + TIE_TOLERANCE * abs(least)  # argmin_random's tie rule, on the same floats
        if len(offsets) == 1:
            # a large fleet ties many idle replicas at the same score: draw among them without
            # listing them (numpy's ``rng.choice`` of k items draws ``rng.integers(k)``, which is
            # several times faster to call)
            index, offset = offsets[0]
            k = index.count_at_most(limit, offset)
            if index.ascending_ids(k):
                return index.nth(0 if k == 1 else int(self.rng.integers(k)))
        tied = sorted(i for index, offset in offsets for i in index.at_most(limit, offset))
        return tied[0] if len(tied) == 1 else int(self.rng.choice(np.asarray(tied)))

    def _group(self, sim: "ClusterSimulator") -> None:
        """One queued-work index per distinct time model of the cluster."""
        self.groups, self.grouped_sim = {}, sim
        for replica in sim.replicas:
            costs = self.replica_costs(replica)
            model = id(replica.time_model)
            if model not in self.groups:
                self.groups[model] = ScoreIndex(
                    lambda r, model=model, costs=costs:
                    queued_work_seconds(r, costs) if id(r.time_model) == model else inf)

    def observed_scores(self, view: ObservationView, row: int) -> np.ndarray:
        return view.queued_work[row] + view.request_cost[row]

    def choose_observed(self, view: ObservationView, row: int) -> int:
        return argmin_random(self.observed_scores(view, row), self.rng)


class StalenessAwareLeastWorkLeft(SpeedAwareLeastWorkLeft):
    """:class:`SpeedAwareLeastWorkLeft` that also counts the work sent since the replica state was
    last refreshed: with stale observations (the env's ``obs_refresh_ms``) the snapshot's queued
    work misses every request routed after it, so routers that trust it herd onto the replica
    that looked idle. Score on observations: ``queued_work + dispatched_work + request_cost``,
    where ``dispatched_work`` is the ``request_cost`` of each request this router sent to the
    replica since the snapshot (tracked by the env). On the simulator the state is always fresh
    (nothing was sent since it was read), so it decides as :class:`SpeedAwareLeastWorkLeft`."""

    name = "staleness_aware_lwl"

    def observed_scores(self, view: ObservationView, row: int) -> np.ndarray:
        return view.queued_work[row] + view.dispatched_work[row] + view.request_cost[row]


class PowerOfTwo(Router):
    """Power of two choices: sample two distinct replicas with the router's generator and take
    the one with fewer ``num_waiting + num_allocated_requests`` (ties to the lower index)."""

    name = "power_of_two"
    quiet = "any"

    def _pick(self, n: int, load: Callable[[int], float]) -> int:
        """Sample two replicas of ``n`` and take the less loaded; only those two are scored."""
        if n == 1:
            return 0
        a, b = sorted(int(i) for i in self.rng.choice(n, 2, replace=False))
        return b if load(b) < load(a) else a

    def choose(self, sim: "ClusterSimulator", rid: int) -> int:
        replicas = sim.replicas

        def load(i: int) -> int:
            if i in getattr(sim, "quiet", ()):
                sim.wake(i)
            return replicas[i].num_waiting + replicas[i].num_allocated_requests

        return self._pick(len(replicas), load)

    def choose_observed(self, view: ObservationView, row: int) -> int:
        loads = view.waiting[row] + view.running[row]
        return self._pick(len(loads), loads.__getitem__)


ROUTERS: dict[str, type[Router]] = {
    cls.name: cls
    for cls in (RoundRobin, RandomRouter, LeastOutstandingRequests, JoinShortestQueue, PowerOfTwo,
                LeastKV, LeastWorkLeft, VLLMDataParallel, SpeedAwareLeastWorkLeft, StalenessAwareLeastWorkLeft)
}
ROUTERS.update(CACHE_ROUTERS)


DEFAULT_ROUTER = RoundRobin.name
"""The router ``simulate`` and :func:`vidur_env.simulation.run_simulation` use unless told (Vidur's default)."""


def load_only_routers() -> list[str]:
    """Every registered router that is not cache-aware, in registry order: the default comparison
    set of ``evaluate`` and of the training job's evaluation (the cache-aware routers need prefix
    workloads to mean anything)."""
    return [name for name in ROUTERS if name not in CACHE_ROUTERS]


def make_router(name: str) -> Router:
    """A fresh router by registry name; the error lists the valid names."""
    try:
        return ROUTERS[name]()
    except KeyError:
        raise ConfigError(f"unknown router {name!r}; choose from {', '.join(sorted(ROUTERS))}") from None


class RouterPolicy:
    """A router as an SB3-style policy on the env's observations, for ``evaluate_policy``,
    behaviour cloning and anything else that calls ``predict``.

    ``predict(obs)`` takes a batch of observations (n_envs, N, F) and returns actions of shape
    (n_envs,) (a single (N, F) observation gives a 0-d array, as SB3 models do). Score routers
    decide from the de-normalised features (:func:`vidur_env.observation.decode_observation`);
    ``round_robin`` keeps a counter and ``random`` / ``power_of_two`` / the tie-breaking
    least-work-left variants a generator, one router
    per env index, restarted where ``episode_start`` is True. The generators derive from
    ``seed`` (None: fresh entropy), so a seeded policy is reproducible.

    :param router: registry name, or a :class:`Router` subclass.
    :param seed: seed of the generators of stochastic routers.
    """

    def __init__(self, router: "str | type[Router]", seed: int | None = None) -> None:
        if isinstance(router, str):
            make_router(router)  # validate the name early, with the registry's message
            router = ROUTERS[router]
        self.router_class = router
        self.name = router.name
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        """Forget every env's router state and reseed."""
        self.rng = np.random.default_rng(seed)
        self.routers: list[Router] = []

    def _restart(self, index: int, num_replicas: int) -> None:
        router = self.router_class()
        router.reset(num_replicas, np.random.default_rng(self.rng.integers(2**63)))
        if index < len(self.routers):
            self.routers[index] = router
        else:
            self.routers.append(router)

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        obs = np.asarray(observation)
        single = obs.ndim == 2
        view = decode_observation(obs)
        n_envs, num_replicas = view.waiting.shape
        starts = np.ones(n_envs, dtype=bool) if episode_start is None else np.asarray(episode_start, dtype=bool).reshape(-1)
        actions = np.empty(n_envs, dtype=np.int64)
        for i in range(n_envs):
            if i >= len(self.routers) or (episode_start is not None and starts[i]):
                self._restart(i, num_replicas)
            actions[i] = self.routers[i].choose_observed(view, i)
        return (actions[0] if single else actions), state
