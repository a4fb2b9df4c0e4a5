"""The cluster simulator: requests arrive, a router picks a replica, replicas batch and run.

Routing is the only coupling between replicas, and it happens at arrivals. So the loop is:
for each arrival in time order, advance every replica to the arrival time (each runs its own
iterations independently), ask the router, hand the request over. Nothing else needs a global
event queue.

To keep a decision's cost flat in the fleet size, the loop touches only the replicas with
work due: a heap holds each replica's next event time (``min(batch_end, pending_at)``), and
advancing to a time pops just the replicas due by then. The replicas advanced and the one
dispatched to since the last dispatch are listed in ``changed`` (with ``round`` counting
dispatches), so routers can rescore only those (:class:`vidur_env.router_base.ScoreIndex`).
Replica state changes only through :meth:`ClusterSimulator.advance_to` and
:meth:`ClusterSimulator.dispatch`.

In a large fleet most of those events are one iteration of one replica that changes no load
count (queue, queued prompt tokens, requests holding KV), and each touches a replica that is
cold in the CPU cache. So while :meth:`ClusterSimulator.route` runs a router that allows it
(``Router.quiet``), replicas go *quiet*: they are skipped, and later brought through every
arrival they skipped at which they had an event due
(:meth:`~vidur_env.replica.Replica.advance_through`), as :meth:`ClusterSimulator.advance_to`
would have brought them at the time (a replica's running float totals are summed per
arrival, so the arrivals must be the same ones for the results to be identical). Under a
router that reads load counts (``"steady"``), a replica whose batch in flight is a steady run
with nothing queued goes quiet until its counts may next change
(:meth:`~vidur_env.decode_runs.DecodeRuns.quiet_until`: a completion, the end of a prefill, the
block limit), when the heap brings it back; under one that reads no replica unless it wakes it
(``"any"``), every replica goes quiet after each event. A quiet replica also comes back when
it gets a request, when the router wakes it (:meth:`ClusterSimulator.wake`), and when the
routing stops; it is not listed in ``changed`` until then.
"""
from __future__ import annotations

from dataclasses import dataclass
from heapq import heappop, heappush, heapreplace
from math import inf
from typing import Callable, Protocol

import numpy as np

from vidur_env.config import ClusterConfig, ReplicaConfig
from vidur_env.errors import ConfigError
from vidur_env.hardware import DEFAULT_MAX_TOKENS, plan_memory
from vidur_env.replica import Replica, make_replica
from vidur_env.request_table import RequestTable
from vidur_env.schedulers import SchedulerLimits
from vidur_env.time_model import ExecutionTimeModel, builtin_time_model, forest_time_model, profiled_time_model


class RequestArrays(Protocol):
    """What the simulator needs of a workload (see :class:`vidur_env.workload.Requests`)."""

    arrived_at: np.ndarray
    num_prefill_tokens: np.ndarray
    num_decode_tokens: np.ndarray
    # optional: ``block_hashes`` (one tuple of prefix block keys or None per request)


Router = Callable[["ClusterSimulator", int], int]
"""A routing policy: given the simulator (at the arrival time) and the request id, a replica id."""


class SimulationError(ConfigError, RuntimeError):
    """The simulation cannot proceed with this input (for example a request that can never fit
    in memory): a user error (:class:`~vidur_env.errors.ConfigError`), and still the
    RuntimeError it always was, for callers that catch that."""


def time_model_key(spec: ReplicaConfig) -> tuple[str, str, int]:
    """What a replica's execution-time model depends on: replicas with one key share one model."""
    return spec.model, spec.device, spec.tensor_parallel


def build_time_models(cluster: ClusterConfig) -> list[ExecutionTimeModel]:
    """One execution-time model per replica, shared between identical replicas so that their
    memoised lookups are shared too."""
    cache: dict[tuple[str, str, int], ExecutionTimeModel] = {}
    models = []
    for spec in cluster.replica_configs:
        key = time_model_key(spec)
        if key not in cache:
            if cluster.time_model == "profiled":
                source = profiled_time_model
                extra: dict = {}
                if cluster.profile_fit == "forest":
                    source, extra = forest_time_model, {"seed": cluster.forest_seed}
                cache[key] = source(
                    cluster.profiling_dir, spec.model, spec.device, spec.tensor_parallel,
                    keying=cluster.keying, kv_granularity=cluster.kv_granularity, extrapolate=cluster.extrapolate,
                    **extra,
                )
            else:
                cache[key] = builtin_time_model(
                    spec.model, spec.device, spec.tensor_parallel, keying=cluster.keying,
                    kv_granularity=cluster.kv_granularity,
                )
        models.append(cache[key])
    return models


def scheduler_limits(spec: ReplicaConfig, max_tokens: int) -> SchedulerLimits:
    """Vidur's memory planner turned into the limits a replica scheduler works within."""
    plan = plan_memory(
        spec.model, spec.device, spec.tensor_parallel, max_tokens=max_tokens,
        batch_size_cap=spec.batch_size_cap, memory_margin_fraction=spec.memory_margin_fraction,
    )
    return SchedulerLimits(
        num_blocks=spec.num_blocks if spec.num_blocks is not None else plan.num_blocks,
        max_batch_size=min(plan.max_batch_size, spec.batch_size_cap),
        batch_size_cap=spec.batch_size_cap,
        chunk_size=spec.chunk_size,
        max_tokens_in_batch=spec.max_tokens_in_batch,
        vllm_batch_rule=spec.vllm_batch_rule,
        max_tokens=max_tokens,
        watermark_fraction=spec.watermark_fraction,
        prefix_caching=spec.prefix_caching,
    )


class ClusterSimulator:
    """A cluster of replicas serving a fixed list of requests, routed one arrival at a time.

    Public state for routers and observations (read-only): ``now``, ``next_request``,
    ``replicas`` (each exposes ``num_waiting``, ``waiting_prompt_tokens``,
    ``num_allocated_requests``, ``num_in_batch``, ``allocated_blocks``, ``num_blocks``,
    ``kv_utilization``, ``is_busy``, ``batch_end``, and ``kv``, its
    :class:`~vidur_env.kv_cache.KVCache`), ``table`` (per-request columns), and ``round`` /
    ``changed`` (the number of dispatches so far, and the ids of the replicas whose state
    changed since the last one: the one dispatched to, then those advanced).

    ``quiet_replicas`` (class switch) lets replicas go quiet under a router that allows it
    (see the module docstring); turning it off must not change any result.

    ``compact`` holds the table in typed arrays (:mod:`vidur_env.request_table`): about a
    fifth of the memory of lists, the same results; for long traces.
    """

    quiet_replicas: bool = True

    def __init__(
        self,
        cluster: ClusterConfig,
        requests: RequestArrays,
        *,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        time_models: list[ExecutionTimeModel] | None = None,
        compact: bool = False,
    ) -> None:
        cluster.validate()
        self.cluster = cluster
        self.table = RequestTable(requests.arrived_at, requests.num_prefill_tokens, requests.num_decode_tokens,
                                  getattr(requests, "block_hashes", None), compact=compact)
        self._check_requests_fit(max_tokens)
        models = time_models if time_models is not None else build_time_models(cluster)
        self.replicas: list[Replica] = [
            make_replica(i, self.table, model, spec.scheduler, scheduler_limits(spec, max_tokens))
            for i, (spec, model) in enumerate(zip(cluster.replica_configs, models))
        ]
        self.num_replicas = len(self.replicas)
        self.next_request = 0
        self.round = 0
        self.changed: list[int] = []
        self._due_at = [inf] * self.num_replicas
        """The time each replica was last queued at in ``_due`` (inf: not queued)."""
        self._due: list[tuple[float, int]] = []
        """Heap of (next event time, replica id); entries whose time is not ``_due_at`` are stale."""
        self.now = self.table.arrived_at[0] if len(self.table) else 0.0
        self._quieting: str | None = None
        """Which replicas may go quiet (the router's ``quiet``, set by :meth:`route`)."""
        self.quiet: dict[int, int] = {}
        """The quiet replicas (read-only for routers: their load counts are exact, the rest of
        their state is not), each with the first arrival it skipped."""

    def _check_requests_fit(self, max_tokens: int) -> None:
        """Reject, naming the first offending request, lengths and arrival orders the
        simulator cannot serve (checked on arrays: this runs at every env reset)."""
        table = self.table
        prefill, decode = np.asarray(table.orig_prefill), np.asarray(table.orig_decode)
        empty = np.flatnonzero((prefill < 1) | (decode < 1))
        if empty.size:
            raise SimulationError(f"request {empty[0]}: prompt and output need at least one token each")
        too_long = np.flatnonzero(prefill + decode > max_tokens)
        if too_long.size:
            rid = too_long[0]
            raise SimulationError(
                f"request {rid}: {prefill[rid]} + {decode[rid]} tokens exceed "
                f"max_tokens={max_tokens}; cap the workload's lengths (WorkloadConfig.max_tokens)"
            )
        backwards = np.flatnonzero(np.diff(np.asarray(table.arrived_at)) < 0)
        if backwards.size:
            raise SimulationError(f"request {backwards[0] + 1}: arrival times must be non-decreasing")

    @property
    def num_requests(self) -> int:
        return len(self.table)

    @property
    def done_routing(self) -> bool:
        return self.next_request >= len(self.table)

    def _queue(self, replica: Replica) -> None:
        """(Re)queue ``replica`` at its next event time; an older entry becomes stale."""
        due = min(replica.batch_end, replica.pending_at)
        i = replica.replica_id
        if due != self._due_at[i]:
            self._due_at[i] = due
            if due != inf:
                heappush(self._due, (due, i))

    def advance_to(self, time: float) -> None:
        """Run every replica up to ``time`` (iterations ending later stay in flight).

        Only the replicas with an event by ``time`` are touched. One whose only event is a
        batch to form exactly at ``time`` is not due yet (an arrival at that instant may still
        join it) and is queued again afterwards. While :meth:`route` lets replicas go quiet,
        ``time`` is the arrival of ``next_request``."""
        due, due_at, replicas, changed, quiet = self._due, self._due_at, self.replicas, self.changed, self.quiet
        not_yet = []
        while due and due[0][0] <= time:
            at, i = due[0]
            if at != due_at[i]:
                heappop(due)  # stale: the replica was requeued since
                continue
            replica = replicas[i]
            if quiet and i in quiet:
                self._catch_up(i, self.next_request)
                at = min(replica.batch_end, replica.pending_at)
                if at > time:  # woken a little early (its time was a bound): requeued
                    due_at[i] = at
                    heapreplace(due, (at, i))
                    continue
            if replica.batch_end <= time or replica.pending_at < time:
                replica.advance_to(time)
                changed.append(i)
                at = min(replica.batch_end, replica.pending_at)
                if self._quieting == "any":
                    at, quiet[i] = inf, self.next_request + 1
                elif self._quieting and replica.runs.suspended is not None:
                    until = replica.runs.quiet_until()
                    if until is not None and until > at:
                        at, quiet[i] = until, self.next_request + 1
                # requeued as by _queue, in one sift of the heap (in a large fleet most
                # replicas advanced are still busy, so this runs at nearly every event)
                due_at[i] = at
                if at != inf:
                    heapreplace(due, (at, i))
                else:
                    heappop(due)
            else:
                not_yet.append(heappop(due))
        for entry in not_yet:
            heappush(due, entry)
        self.now = max(self.now, time)

    def _catch_up(self, i: int, end: int) -> None:
        """Bring quiet replica ``i`` through the arrivals it skipped, up to request ``end``
        (excluded), as :meth:`advance_to` would have brought it at each."""
        self.replicas[i].advance_through(self.table.arrived_at, self.quiet.pop(i), end)

    def wake(self, i: int) -> None:
        """Bring quiet replica ``i`` to the current arrival, as :meth:`advance_to` would have, for
        a router about to read more of it than a quiet replica keeps exact; it is listed in
        ``changed``."""
        self._bring_back(i, self.next_request + 1)

    def _bring_back(self, i: int, end: int) -> None:
        """Catch quiet replica ``i`` up to request ``end`` (excluded), queue its next event and
        list it in ``changed``: it is an ordinary replica again."""
        self._catch_up(i, end)
        self._queue(self.replicas[i])
        self.changed.append(i)

    def advance_to_next_arrival(self) -> int:
        """Bring the cluster to the next request's arrival; return that request's id."""
        rid = self.next_request
        self.advance_to(self.table.arrived_at[rid])
        return rid

    def dispatch(self, replica_id: int) -> None:
        """Route the current request (the one :meth:`advance_to_next_arrival` returned)."""
        if not 0 <= replica_id < self.num_replicas:
            raise ValueError(f"replica id {replica_id} out of range [0, {self.num_replicas})")
        rid = self.next_request
        if replica_id in self.quiet:
            self._catch_up(replica_id, rid + 1)  # this arrival too, as advance_to would have
        self.table.replica[rid] = replica_id
        replica = self.replicas[replica_id]
        replica.add_request(rid, self.table.arrived_at[rid])
        if self._quieting == "any":
            self.quiet[replica_id] = rid + 1
            self._due_at[replica_id] = inf  # its heap entries are stale
        else:
            self._queue(replica)
        self.next_request += 1
        self.round += 1
        self.changed = [replica_id]

    def drain(self) -> None:
        """Run until every routed request has completed."""
        self.advance_to(float("inf"))
        stuck = np.flatnonzero(np.asarray(self.table.completed_at)[: self.next_request] < 0)
        if stuck.size:
            raise SimulationError(
                f"{stuck.size} request(s) can never be scheduled (first: {stuck[0]}); "
                "the replica's KV cache is too small for them"
            )

    def route(self, router: Router, until: int | None = None) -> None:
        """Route the requests before ``until`` (default: all) with ``router``; if it allows
        it (``router.quiet``), replicas may go quiet meanwhile (see the module
        docstring), and all are brought up to date before this returns."""
        end = self.num_requests if until is None else until
        self._quieting = getattr(router, "quiet", None) if self.quiet_replicas else None
        try:
            while self.next_request < end:
                self.dispatch(router(self, self.advance_to_next_arrival()))
        finally:
            self._quieting = None
            for i in list(self.quiet):
                self._bring_back(i, self.next_request)

    def run(self, router: Router) -> None:
        """Route every request with ``router`` and drain the cluster."""
        self.route(router)
        self.drain()


@dataclass(frozen=True)
class ReplicaSummary:
    """Per-replica figures for the metrics report."""

    num_requests: int
    busy_time: float
    block_time: float
    num_blocks: int
    peak_blocks: int
    num_iterations: int
    batch_size_sum: int
    tokens_sum: int
    prefill_tokens_sum: int
    num_preemptions: int


def replica_summaries(sim: ClusterSimulator) -> list[ReplicaSummary]:
    """Collect each replica's running totals once the simulation has drained."""
    counts = np.bincount(np.asarray(sim.table.replica[: sim.next_request]), minlength=sim.num_replicas)
    return [
        ReplicaSummary(
            num_requests=int(counts[r.replica_id]),
            busy_time=r.stats.busy_time,
            block_time=r.stats.block_time,
            num_blocks=r.num_blocks,
            peak_blocks=r.stats.peak_blocks,
            num_iterations=r.stats.num_iterations,
            batch_size_sum=r.stats.batch_size_sum,
            tokens_sum=r.stats.tokens_sum,
            prefill_tokens_sum=r.stats.prefill_tokens_sum,
            num_preemptions=r.stats.num_preemptions,
        )
        for r in sim.replicas
    ]
