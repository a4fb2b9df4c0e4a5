"""What a router sees: one row of normalised features per replica, plus the incoming request.

Every feature is bounded in [0, 1]. Unbounded counts and durations go through the squash
``x / (x + c)``: monotone, 0.5 at ``x = c``, never clipped, and invertible
(:func:`unsquash`), so policies computed from observations (see
:class:`vidur_env.routers.RouterPolicy`) recover the raw figures exactly up to float32
resolution. The same per-replica figures are computed from the simulator's public replica
attributes here, for the routers that read the simulator directly.

Columns (``FEATURES``; the env's docstring has the full table):

====  ===================  =================================================  ============
col   name                 raw quantity                                       transform
====  ===================  =================================================  ============
0     waiting              requests in the queue, holding no KV               squash(8)
1     waiting_tokens       prompt tokens of those requests                    squash(8192)
2     running              requests holding KV (in the batch or not)          squash(32)
3     kv_utilization       allocated KV blocks / KV blocks                    as is
4     batch_size           requests in the iteration in flight                squash(32)
5     queued_work          estimated seconds of queued work (see below)       squash(2 s)
6     batch_remaining      seconds until the iteration in flight ends         squash(50 ms)
7     relative_speed       fastest replica's unit cost / this replica's       as is
8     relative_kv          this replica's KV blocks / the largest KV          as is
9     prompt               incoming request's prompt tokens / max_tokens      as is
10    output (oracle)      incoming request's output tokens / max_tokens      as is
+0    prefix_match         incoming request's cached prompt tokens here /     as is
                           its prompt tokens, in the cache view (optional)
+1    cache_occupancy      cached blocks / KV blocks, in the cache view       as is
====  ===================  =================================================  ============

The two cache columns (``CACHE_FEATURES``) come last and only with a cache view
(:class:`vidur_env.cache_view.CacheView`, the env's ``cache_view``).
"""
from __future__ import annotations

from dataclasses import dataclass
from math import inf
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from vidur_env.cache_view import CacheView
    from vidur_env.replica import Replica
    from vidur_env.time_model import ExecutionTimeModel

EXPECTED_OUTPUT_TOKENS = 210
"""Output tokens a request is assumed to still need in the queued-work estimate: about the mean
output of the embedded default (conversation) workload. A fixed prior, never a request's own
output length, which a router cannot know."""

COST_CHUNK_TOKENS = 512
"""Prefill cost per token is that of one prefill chunk of this many tokens on an idle replica."""
COST_DECODE_BATCH = 32
COST_DECODE_KV = 1024
"""Decode cost per token is that of a batch of ``COST_DECODE_BATCH`` decodes at this KV length,
divided by the batch size (the per-request share of a typical decode iteration)."""
REFERENCE_PROMPT_TOKENS = 1024
"""The reference request (this prompt, ``EXPECTED_OUTPUT_TOKENS`` output) whose queued-work
cost defines a replica's relative speed."""


@dataclass(frozen=True)
class Feature:
    """One observation column: its name and its squash constant (None = as is); the module
    docstring says what each measures."""

    name: str
    scale: float | None


REPLICA_FEATURES: tuple[Feature, ...] = (
    Feature("waiting", 8.0),
    Feature("waiting_tokens", 8192.0),
    Feature("running", 32.0),
    Feature("kv_utilization", None),
    Feature("batch_size", 32.0),
    Feature("queued_work", 2.0),
    Feature("batch_remaining", 0.05),
    Feature("relative_speed", None),
    Feature("relative_kv", None),
)
REQUEST_FEATURES: tuple[Feature, ...] = (Feature("prompt", None),)
ORACLE_FEATURES: tuple[Feature, ...] = (Feature("output", None),)
"""The oracle column (``oracle=True`` only)."""
CACHE_FEATURES: tuple[Feature, ...] = (Feature("prefix_match", None), Feature("cache_occupancy", None))
"""The cache columns (with a cache view only), last."""
COLUMN = {f.name: i for i, f in enumerate(REPLICA_FEATURES + REQUEST_FEATURES + ORACLE_FEATURES)}
"""Column index of every feature by name."""
NUM_REPLICA_FEATURES = len(REPLICA_FEATURES)


def features(oracle: bool, cache: bool = False) -> tuple[Feature, ...]:
    """The columns of the observation, in order."""
    return REPLICA_FEATURES + REQUEST_FEATURES + (ORACLE_FEATURES if oracle else ()) + (CACHE_FEATURES if cache else ())


def unsquash(y: np.ndarray, c: float) -> np.ndarray:
    """Inverse of the squash ``x / (x + c)`` (float64, for recovering raw figures from observations)."""
    y = np.asarray(y, dtype=np.float64)
    return c * y / np.maximum(1.0 - y, 1e-12)


@dataclass(frozen=True)
class ReplicaCosts:
    """Per-token costs of one replica, from its execution-time model, for the work estimate.

    :param prefill_token_s: seconds per prompt token (a ``COST_CHUNK_TOKENS`` chunk at KV 0).
    :param decode_token_s: seconds per output token of one request (its share of a decode
        batch of ``COST_DECODE_BATCH`` at ``COST_DECODE_KV`` KV tokens).
    """

    prefill_token_s: float
    decode_token_s: float

    @classmethod
    def from_time_model(cls, model: "ExecutionTimeModel") -> "ReplicaCosts":
        prefill = model.iteration_time(0, 0, (COST_CHUNK_TOKENS,), (0,)) / COST_CHUNK_TOKENS
        decode = model.iteration_time(COST_DECODE_BATCH, COST_DECODE_BATCH * COST_DECODE_KV, (), ()) / COST_DECODE_BATCH
        return cls(prefill, decode)

    @property
    def reference_cost(self) -> float:
        """Queued-work seconds of the reference request on this replica."""
        return REFERENCE_PROMPT_TOKENS * self.prefill_token_s + EXPECTED_OUTPUT_TOKENS * self.decode_token_s


def queued_work_seconds(replica: "Replica", costs: ReplicaCosts) -> float:
    """Estimated seconds of work queued at ``replica``, from public attributes only.

    ``waiting_prompt_tokens * prefill_token_s + (num_waiting + num_allocated_requests) *
    EXPECTED_OUTPUT_TOKENS * decode_token_s``: the queued prompts to prefill plus the decode
    load of every request queued or holding KV, each assumed to need the prior output length.
    Additive costs ignore batching, so it is a load index in seconds rather than a prediction.
    """
    requests = replica.num_waiting + replica.num_allocated_requests
    return replica.waiting_prompt_tokens * costs.prefill_token_s + requests * EXPECTED_OUTPUT_TOKENS * costs.decode_token_s


class ObservationBuilder:
    """Builds the (N, F) float32 observation from the simulator, fast.

    The observation lives in one flat Python list (row-major, request columns included):
    :meth:`snapshot` rewrites the replica columns, :meth:`build` the request columns, and one
    ``np.array`` call per step converts it. With ``refresh_s > 0`` the replica columns are a
    snapshot taken at the last refresh tick (multiples of ``refresh_s``): :meth:`needs_refresh`
    tells the env when to advance the simulator to a tick and :meth:`snapshot` to take it there.
    """

    def __init__(self, costs: Sequence[ReplicaCosts], kv_blocks: Sequence[int], max_tokens: int,
                 *, oracle: bool = False, refresh_s: float = 0.0, cache: "CacheView | None" = None) -> None:
        self.costs = list(costs)
        self.num_replicas = len(self.costs)
        self.oracle = oracle
        self.cache = cache
        self.num_features = len(features(oracle, cache is not None))
        self.kv_blocks = list(kv_blocks)
        self.max_tokens = max_tokens
        self.refresh_s = refresh_s
        fastest = min(c.reference_cost for c in self.costs)
        largest = max(kv_blocks)
        self.static = [(fastest / c.reference_cost, blocks / largest) for c, blocks in zip(self.costs, kv_blocks)]
        self.per_token = [(c.prefill_token_s, EXPECTED_OUTPUT_TOKENS * c.decode_token_s) for c in self.costs]
        self.tail = (0.0,) * (self.num_features - NUM_REPLICA_FEATURES)
        self.flat: list[float] = []
        self.next_tick = 0.0

    def needs_refresh(self, now: float) -> bool:
        """Whether the cached rows are older than the last tick at or before ``now``."""
        return not self.flat or self.refresh_s <= 0.0 or now >= self.next_tick

    def last_tick(self, now: float) -> float:
        """The most recent refresh tick at or before ``now`` (``now`` itself without staleness)."""
        if self.refresh_s <= 0.0:
            return now
        return (now // self.refresh_s) * self.refresh_s

    def snapshot(self, replicas: Sequence["Replica"], now: float) -> None:
        """Take the replica columns from the simulator state at time ``now``.

        The squash constants are those of ``REPLICA_FEATURES``, inlined for speed.
        """
        flat: list[float] = []
        tail = self.tail
        for replica, (prefill_s, request_s), (speed, kv) in zip(replicas, self.per_token, self.static):
            waiting = replica.num_waiting
            tokens = replica.waiting_prompt_tokens
            running = replica.num_allocated_requests
            in_batch = replica.num_in_batch
            end = replica.batch_end
            remaining = end - now if end != inf else 0.0
            work = tokens * prefill_s + (waiting + running) * request_s
            flat += (
                waiting / (waiting + 8.0),
                tokens / (tokens + 8192.0),
                running / (running + 32.0),
                replica.allocated_blocks / replica.num_blocks,
                in_batch / (in_batch + 32.0),
                work / (work + 2.0),
                remaining / (remaining + 0.05) if remaining > 0.0 else 0.0,
                speed,
                kv,
            )
            flat += tail
        self.flat = flat
        if self.refresh_s > 0.0:
            self.next_tick = self.last_tick(now) + self.refresh_s

    def build(self, prompt_tokens: int, output_tokens: int, prompt_keys: tuple[int, ...] = ()) -> np.ndarray:
        """The observation from the cached replica columns and the incoming request (whose
        prompt block keys the cache columns match)."""
        flat = self.flat
        n, f = self.num_replicas, self.num_features
        flat[NUM_REPLICA_FEATURES::f] = [prompt_tokens / self.max_tokens] * n
        if self.oracle:
            flat[NUM_REPLICA_FEATURES + 1::f] = [output_tokens / self.max_tokens] * n
        if self.cache is not None:
            cache = self.cache
            prompt = max(prompt_tokens, 1)
            flat[f - 2::f] = [min(16 * m, prompt) / prompt for m in cache.matches(prompt_keys)]
            flat[f - 1::f] = [min(cache.cached(i) / b, 1.0) for i, b in enumerate(self.kv_blocks)]
        return np.array(flat, dtype=np.float32).reshape(n, f)

    def record(self, replica: int, prompt_keys: tuple[int, ...]) -> None:
        """The request with ``prompt_keys`` went to ``replica`` (feeds an approximate cache view)."""
        if self.cache is not None:
            self.cache.record(replica, prompt_keys)


@dataclass(frozen=True)
class ObservationView:
    """Raw (de-normalised) per-replica figures recovered from a batch of observations.

    Every array has shape (n_envs, N); counts are rounded to integers.
    """

    waiting: np.ndarray
    waiting_tokens: np.ndarray
    running: np.ndarray
    kv_utilization: np.ndarray
    batch_size: np.ndarray
    queued_work: np.ndarray
    batch_remaining: np.ndarray
    relative_speed: np.ndarray
    prefix_match: np.ndarray | None = None
    """The cache columns, None when the observation has none (no ``cache_view``)."""
    cache_occupancy: np.ndarray | None = None


def decode_observation(obs: np.ndarray) -> ObservationView:
    """Undo the normalisation of observations of shape (N, F) or (n_envs, N, F)."""
    obs = np.asarray(obs)
    if obs.ndim == 2:
        obs = obs[None]
    if obs.ndim != 3 or obs.shape[2] < NUM_REPLICA_FEATURES + 1:
        raise ValueError(f"expected observations of shape (n_envs, N, F>={NUM_REPLICA_FEATURES + 1}), got {obs.shape}")
    col = lambda name: obs[:, :, COLUMN[name]]  # noqa: E731
    count = lambda name: np.rint(unsquash(col(name), REPLICA_FEATURES[COLUMN[name]].scale))  # noqa: E731
    return ObservationView(
        waiting=count("waiting"),
        waiting_tokens=count("waiting_tokens"),
        running=count("running"),
        kv_utilization=col("kv_utilization").astype(np.float64),
        batch_size=count("batch_size"),
        queued_work=unsquash(col("queued_work"), 2.0),
        batch_remaining=unsquash(col("batch_remaining"), 0.05),
        relative_speed=col("relative_speed").astype(np.float64),
        **cache_columns(obs),
    )


def cache_columns(obs: np.ndarray) -> dict[str, np.ndarray]:
    """The cache columns of (n_envs, N, F) observations, by name; none when F leaves no room
    for them (they are the last two, after the request and optional oracle columns)."""
    if obs.shape[2] < NUM_REPLICA_FEATURES + len(REQUEST_FEATURES) + len(CACHE_FEATURES):
        return {}
    return {f.name: obs[:, :, obs.shape[2] - len(CACHE_FEATURES) + i].astype(np.float64)
            for i, f in enumerate(CACHE_FEATURES)}
