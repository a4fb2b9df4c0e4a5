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
10    request_cost         incoming request's estimated seconds here (below)  squash(0.2 s)
11    dispatched_work      request_cost of the requests routed here since     squash(2 s)
                           the replica columns were taken (0 when fresh)
12    work_gap             queued_work + dispatched_work + request_cost,      squash(0.5 s)
                           minus its least value over the replicas
13    snapshot_age         seconds since the replica columns were taken       squash(0.5 s)
14    requests_left        decisions left in the episode (this one            as is
                           included) / the episode's decisions
15    fluid_ttft           the incoming request's first-token wait here by    squash(0.2 s)
                           a fluid model of the prompts routed here (below)
16    output               incoming request's output tokens, true or predicted, / max_tokens   as is
====  ===================  =================================================  =====
The two cache columns (``CACHE_FEATURES``) come last and only with a cache view
(:class:`vidur_env.cache_view.CacheView`, the env's ``cache_view``).

``fluid_ttft`` is the router's own memory, not a reading of the replicas: every prompt routed
to a replica adds its prefill time there (:class:`PrefillPlan`: the iterations its scheduler
would prefill it in, beside a typical decode batch, from the replica's time model) to a
backlog that drains at one second per second; the column is that backlog at the decision plus
the incoming prompt's own prefill time. Prompts wait mostly behind the prompts routed just
before them, and a router knows those even when its view of the replicas is a second old
(``obs_refresh_ms``); a count of what was sent since the last refresh (``dispatched_work``)
does not say how much of it is done. With a cache view, a prompt's prefill at a replica is that
of the tokens past its cached prefix there (the prefill of the whole prompt less that of the
prefix), both in the column and in the backlog it leaves.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import inf
from typing import TYPE_CHECKING, Sequence

import numpy as np

from vidur_env.kv_cache import BLOCK_SIZE

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
REQUEST_FEATURES: tuple[Feature, ...] = (
    Feature("prompt", None),
    Feature("request_cost", 0.2),
    Feature("dispatched_work", 2.0),
    Feature("work_gap", 0.5),
    Feature("snapshot_age", 0.5),
    Feature("requests_left", None),
    Feature("fluid_ttft", 0.2),
)
"""The columns rewritten at every decision (the incoming request, and what changed since the snapshot)."""
OUTPUT_FEATURES: tuple[Feature, ...] = (Feature("output", None),)
"""The output-length column (with an output predictor only: the env's ``output_predictor``)."""
CACHE_FEATURES: tuple[Feature, ...] = (Feature("prefix_match", None), Feature("cache_occupancy", None))
"""The cache columns (with a cache view only), last."""
COLUMN = {f.name: i for i, f in enumerate(REPLICA_FEATURES + REQUEST_FEATURES + OUTPUT_FEATURES)}
"""Column index of every feature by name."""
SCALE = {f.name: f.scale for f in REPLICA_FEATURES + REQUEST_FEATURES + OUTPUT_FEATURES}
"""Squash constant of every feature by name (None: as is)."""
NUM_REPLICA_FEATURES = len(REPLICA_FEATURES)


def features(output: bool, cache: bool = False) -> tuple[Feature, ...]:
    """The columns of the observation, in order (``output``: with the output-length column)."""
    return REPLICA_FEATURES + REQUEST_FEATURES + (OUTPUT_FEATURES if output else ()) + (CACHE_FEATURES if cache else ())


def squash(x: float, c: float) -> float:
    """``x / (x + c)`` for ``x >= 0``: bounded in [0, 1), 0.5 at ``c``, invertible by :func:`unsquash`."""
    return x / (x + c)


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


@dataclass
class PrefillPlan:
    """How a replica prefills a prompt, for ``fluid_ttft``: in chunks of ``chunk`` tokens (None:
    whole), each iteration beside ``decodes`` decoding requests at ``COST_DECODE_KV`` tokens (the
    typical batch of :class:`ReplicaCosts`; 0 where the scheduler runs prefill-only batches).
    Keeps the seconds of every prompt length it was asked (``seconds``), so one plan kept
    across episodes computes each length once."""

    model: "ExecutionTimeModel"
    chunk: int | None
    decodes: int
    memo: dict[int, float] = field(default_factory=dict, repr=False, compare=False)

    @property
    def key(self) -> tuple[int, int | None, int]:
        """What the prefill times depend on: replicas with one key share one plan."""
        return id(self.model), self.chunk, self.decodes

    @classmethod
    def of(cls, replica: "Replica") -> "PrefillPlan":
        scheduler = replica.scheduler
        decodes = COST_DECODE_BATCH if scheduler.prefill_with_decodes else 0
        return cls(replica.time_model, scheduler.prefill_chunk(decodes), decodes)

    def seconds(self, prompt_tokens: int) -> float:
        """The time of the iterations that prefill ``prompt_tokens``: what the prompt holds the
        replica for, and so what a prompt queued behind it waits."""
        seconds = self.memo.get(prompt_tokens)
        if seconds is None:
            seconds = self.memo[prompt_tokens] = self._iterations(prompt_tokens)
        return seconds

    def _iterations(self, prompt_tokens: int) -> float:
        chunk = self.chunk or prompt_tokens
        decodes, kv = self.decodes, self.decodes * COST_DECODE_KV
        total, done = 0.0, 0
        while done < prompt_tokens:
            tokens = min(chunk, prompt_tokens - done)
            total += self.model.iteration_time(decodes, kv, (tokens,), (done,))
            done += tokens
        return total


def queued_work_seconds(replica: "Replica", costs: ReplicaCosts) -> float:
    """Estimated seconds of work queued at ``replica``, from public attributes only.

    ``waiting_prompt_tokens * prefill_token_s + (num_waiting + num_allocated_requests) *
    EXPECTED_OUTPUT_TOKENS * decode_token_s``: the queued prompts to prefill plus the decode
    load of every request queued or holding KV, each assumed to need the prior output length.
    Additive costs ignore batching, so it is a load index in seconds rather than a prediction.
    """
    requests = replica.num_waiting + replica.num_allocated_requests
    return replica.waiting_prompt_tokens * costs.prefill_token_s + requests * EXPECTED_OUTPUT_TOKENS * costs.decode_token_s


def request_seconds(prompt_tokens: int, output_tokens: int, costs: ReplicaCosts) -> float:
    """Estimated seconds a request adds to a replica's queued work, in the units of
    :func:`queued_work_seconds`; pass ``EXPECTED_OUTPUT_TOKENS`` as the output unless the true
    length is known or predicted."""
    return prompt_tokens * costs.prefill_token_s + output_tokens * costs.decode_token_s


class ObservationBuilder:
    """Builds the (N, F) float32 observation from the simulator, fast.

    The observation lives in one flat Python list (row-major, request columns included):
    :meth:`snapshot` rewrites the replica columns, :meth:`build` the request columns, and one
    ``np.array`` call per step converts it. With ``refresh_s > 0`` the replica columns are a
    snapshot taken at the last refresh tick (multiples of ``refresh_s``): :meth:`needs_refresh`
    tells the env when to advance the simulator to a tick and :meth:`snapshot` to take it there.
    """

    def __init__(self, costs: Sequence[ReplicaCosts], kv_blocks: Sequence[int], max_tokens: int,
                 *, prefill_plans: Sequence[PrefillPlan], output_estimate: bool = False,
                 refresh_s: float = 0.0, cache: "CacheView | None" = None) -> None:
        self.costs = list(costs)
        self.prefill_plans = list(prefill_plans)
        """How each replica prefills a prompt (its time model is the one its ``costs`` come
        from); replicas alike may share one plan, and with it the prefill times it keeps."""
        self.num_replicas = len(self.costs)
        self.output_estimate = output_estimate
        """Whether :meth:`build` is given an estimate of the output length (true or predicted)
        to show and cost the request with; otherwise the prior mean is used."""
        self.cache = cache
        self.num_features = len(features(output_estimate, cache is not None))
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
        self.work = [0.0] * self.num_replicas
        """Queued-work seconds of each replica at the snapshot."""
        self.sent = [0.0] * self.num_replicas
        """Estimated seconds routed to each replica since the snapshot (``dispatched_work``)."""
        self.request_costs = [0.0] * self.num_replicas
        """The current request's ``request_cost`` on each replica (what :meth:`dispatched` adds)."""
        self.taken_at = 0.0
        self.backlog = [0.0] * self.num_replicas
        """Seconds of routed prompt work not yet drained at ``backlog_at`` (``fluid_ttft``)."""
        self.backlog_at = 0.0
        self.prefill_seconds = [0.0] * self.num_replicas
        """The current request's prefill time on each replica (what :meth:`dispatched` adds to the backlog)."""

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

        The squash constants are those of ``REPLICA_FEATURES``, inlined for speed; the KV
        figures are read from each replica's KV cache itself (one attribute each, every step).
        """
        flat: list[float] = []
        work_s: list[float] = []
        tail = self.tail
        for replica, (prefill_s, request_s), (speed, kv) in zip(replicas, self.per_token, self.static):
            cache = replica.kv
            waiting = replica.num_waiting
            tokens = replica.waiting_prompt_tokens
            running = cache.num_allocated_requests
            in_batch = replica.num_in_batch
            end = replica.batch_end
            remaining = end - now if end != inf else 0.0
            work = tokens * prefill_s + (waiting + running) * request_s
            work_s.append(work)
            flat += (
                waiting / (waiting + 8.0),
                tokens / (tokens + 8192.0),
                running / (running + 32.0),
                cache.allocated_blocks / cache.num_blocks,
                in_batch / (in_batch + 32.0),
                work / (work + 2.0),
                remaining / (remaining + 0.05) if remaining > 0.0 else 0.0,
                speed,
                kv,
            )
            flat += tail
        self.flat = flat
        self.work = work_s
        self.sent = [0.0] * self.num_replicas
        self.taken_at = now
        if self.refresh_s > 0.0:
            self.next_tick = self.last_tick(now) + self.refresh_s

    def dispatched(self, replica: int) -> None:
        """The current request went to ``replica``: count its cost there until the next snapshot,
        and its prefill time in the replica's backlog."""
        self.sent[replica] += self.request_costs[replica]
        self.backlog[replica] += self.prefill_seconds[replica]

    def fluid_ttft(self, prompt_tokens: int, now: float, cached_tokens: Sequence[int] = ()) -> list[float]:
        """Each replica's backlog drained to ``now``, plus the prompt's own prefill time there.

        :param cached_tokens: the prompt's tokens believed cached at each replica (none if empty);
            their prefill is subtracted, though the last prompt token is always computed.
        """
        elapsed = max(now - self.backlog_at, 0.0)
        self.backlog = [b - elapsed if b > elapsed else 0.0 for b in self.backlog]
        self.backlog_at = now
        plans = self.prefill_plans
        if cached_tokens:
            last = prompt_tokens - 1
            self.prefill_seconds = [plan.seconds(prompt_tokens) - plan.seconds(min(hit, last))
                                    for plan, hit in zip(plans, cached_tokens)]
        else:
            self.prefill_seconds = [plan.seconds(prompt_tokens) for plan in plans]
        return [b + q for b, q in zip(self.backlog, self.prefill_seconds)]

    def build(self, prompt_tokens: int, output_tokens: int, now: float | None = None,
              requests_left: float = 1.0, prompt_keys: tuple[int, ...] = ()) -> np.ndarray:
        """The observation from the cached replica columns and the incoming request.

        :param now: the decision time (for ``snapshot_age``; None: the snapshot's time).
        :param requests_left: the ``requests_left`` column; 0 means no request is waiting (the
            episode is over), and every request column is then 0.
        :param prompt_keys: the incoming request's prompt block keys, which the cache columns match.
        """
        flat = self.flat
        n, f = self.num_replicas, self.num_features
        if requests_left > 0.0:
            output = output_tokens if self.output_estimate else EXPECTED_OUTPUT_TOKENS
            # request_seconds, inlined for speed
            costs = [prompt_tokens * c.prefill_token_s + output * c.decode_token_s for c in self.costs]
            gaps = [w + s + c for w, s, c in zip(self.work, self.sent, costs)]
            least = min(gaps)
            gaps = [g - least for g in gaps]
            age = 0.0 if now is None else now - self.taken_at
            hits = ([min(BLOCK_SIZE * m, prompt_tokens) for m in self.cache.matches(prompt_keys)]
                    if self.cache is not None else [])
            fluid = self.fluid_ttft(prompt_tokens, self.taken_at if now is None else now, hits)
        else:
            costs, gaps, age, fluid, hits = [0.0] * n, [0.0] * n, 0.0, [0.0] * n, [0] * n
        self.request_costs = costs
        base = NUM_REPLICA_FEATURES
        cost_c, sent_c, gap_c = SCALE["request_cost"], SCALE["dispatched_work"], SCALE["work_gap"]
        flat[base::f] = [prompt_tokens / self.max_tokens] * n
        flat[base + 1::f] = [c / (c + cost_c) for c in costs]
        flat[base + 2::f] = [s / (s + sent_c) for s in self.sent]
        flat[base + 3::f] = [g / (g + gap_c) for g in gaps]
        flat[base + 4::f] = [squash(age, SCALE["snapshot_age"])] * n
        flat[base + 5::f] = [requests_left] * n
        fluid_c = SCALE["fluid_ttft"]
        flat[base + 6::f] = [t / (t + fluid_c) for t in fluid]
        if self.output_estimate:
            flat[COLUMN["output"]::f] = [output_tokens / self.max_tokens] * n
        if self.cache is not None:
            cache = self.cache
            prompt = max(prompt_tokens, 1)
            flat[f - 2::f] = [hit / prompt for hit in hits]
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
    request_cost: np.ndarray
    dispatched_work: np.ndarray
    snapshot_age: np.ndarray
    fluid_ttft: np.ndarray
    prefix_match: np.ndarray | None = None
    """The cache columns, None when the observation has none (no ``cache_view``)."""
    cache_occupancy: np.ndarray | None = None


def decode_observation(obs: np.ndarray) -> ObservationView:
    """Undo the normalisation of observations of shape (N, F) or (n_envs, N, F)."""
    obs = np.asarray(obs)
    if obs.ndim == 2:
        obs = obs[None]
    width = len(features(False))
    if obs.ndim != 3 or obs.shape[2] < width:
        raise ValueError(f"expected observations of shape (n_envs, N, F>={width}), got {obs.shape}")
    col = lambda name: obs[:, :, COLUMN[name]]  # noqa: E731
    seconds = lambda name: unsquash(col(name), SCALE[name])  # noqa: E731
    count = lambda name: np.rint(seconds(name))  # noqa: E731
    return ObservationView(
        waiting=count("waiting"),
        waiting_tokens=count("waiting_tokens"),
        running=count("running"),
        kv_utilization=col("kv_utilization").astype(np.float64),
        batch_size=count("batch_size"),
        queued_work=seconds("queued_work"),
        batch_remaining=seconds("batch_remaining"),
        relative_speed=col("relative_speed").astype(np.float64),
        request_cost=seconds("request_cost"),
        dispatched_work=seconds("dispatched_work"),
        snapshot_age=seconds("snapshot_age"),
        fluid_ttft=seconds("fluid_ttft"),
        **cache_columns(obs),
    )


def cache_columns(obs: np.ndarray) -> dict[str, np.ndarray]:
    """The cache columns of (n_envs, N, F) observations, by name; none when F leaves no room
    for them (they are the last two, after the request and optional output columns)."""
    if obs.shape[2] < NUM_REPLICA_FEATURES + len(REQUEST_FEATURES) + len(CACHE_FEATURES):
        return {}
    return {f.name: obs[:, :, obs.shape[2] - len(CACHE_FEATURES) + i].astype(np.float64)
            for i, f in enumerate(CACHE_FEATURES)}
