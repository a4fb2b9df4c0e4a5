"""Rewards of the routing env, their registry, and the isolated (no-queueing) service time they
are scaled by.

A reward is one class here: it implements :class:`Reward` (``add`` a routed request, ``step``
to a decision time, ``finish`` the drain), says which isolated latency its default scale is
the mean of (``scale_by``), may check its settings (``check``), and is registered under its
name with :func:`register_reward`. The env builds the one named by its ``reward`` argument
from :data:`REWARDS`, and every list of reward names (the env's error, ``--reward``) reads
that registry.

Latency rewards integrate a count of pending requests over time, exactly (up to float
rounding): between two decisions at ``t0 < t1`` the area under the count is
``n * (t1 - t0) - sum(t1 - e)`` over the requests whose end time ``e`` fell in between, with
``n`` the count after the decision at ``t0``. Summed over an episode and its final drain, that
is ``sum(end - arrival)`` over its requests: minus the return is the total latency (E2E or
TTFT) divided by the scale.
"""
from __future__ import annotations

from dataclasses import dataclass
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar, Literal, Sequence, TypeVar

import numpy as np

from vidur_env.config import ConfigError

if TYPE_CHECKING:
    from vidur_env.config import ReplicaConfig
    from vidur_env.replica import Replica
    from vidur_env.request_table import RequestTable
    from vidur_env.time_model import ExecutionTimeModel


@dataclass(frozen=True)
class RewardSettings:
    """A reward's settings beyond its scale (the env's ``slo_*`` arguments), checked here
    whichever reward is chosen; each reward reads the ones it needs, and its
    :meth:`Reward.check` rejects settings it cannot work with."""

    slo_ttft_s: float | None = None
    slo_e2e_s: float | None = None
    ttft_weight: float = 10.0
    """Weight of the TTFT area in the ``latency_ttft`` reward (E2E area weighs 1)."""

    def __post_init__(self) -> None:
        for name in ("slo_ttft_s", "slo_e2e_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"VidurRoutingEnv.{name}: must be a positive number of seconds, got {value!r}")
        weight = self.ttft_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < float("inf"):
            raise ConfigError(f"VidurRoutingEnv.ttft_weight: must be a finite number >= 0, got {weight!r}")


class Reward(ABC):
    """The protocol of a reward, built by the env as ``cls(table, replicas, scale, settings)``
    for each episode and told every decision; it reads the replicas' running totals
    (``ReplicaStats``) rather than scanning requests, so a step costs O(replicas).

    ``name`` is its registry name (the env's ``reward`` argument). ``scale_by`` names the
    isolated latency (``"e2e"`` or ``"ttft"``, :func:`isolated_latencies`) whose mean over a
    fixed workload draw is the default ``reward_scale``, or None for a default of 1.
    """

    name: ClassVar[str]
    scale_by: ClassVar[Literal["e2e", "ttft"] | None] = "e2e"

    @classmethod
    def check(cls, settings: RewardSettings) -> None:
        """Raise :class:`ConfigError` if the reward cannot work with ``settings`` (checked when
        the env is made, before anything is simulated). Default: any settings do."""

    @abstractmethod
    def add(self, rid: int, replica: int) -> None:
        """Request ``rid`` was routed to ``replica`` at the current decision time."""

    @abstractmethod
    def step(self, t: float) -> float:
        """The reward for the time from the last decision to the next one, at ``t``."""

    @abstractmethod
    def finish(self) -> float:
        """The reward of the drain, once the simulator has drained (every request ended)."""


REWARDS: dict[str, type[Reward]] = {}
"""The reward registry, name -> class (:func:`register_reward`)."""
DEFAULT_REWARD = "latency"
"""The reward the env and ``evaluate --reward`` use unless told otherwise."""
REWARD_ALIASES = {"e2e": "latency"}
"""Other names the env accepts for a registered reward."""

R = TypeVar("R", bound=type[Reward])


def register_reward(cls: R) -> R:
    """Class decorator: list ``cls`` in :data:`REWARDS` under ``cls.name``."""
    REWARDS[cls.name] = cls
    return cls


def reward_class(name: str) -> type[Reward]:
    """The registered reward ``name`` (or an alias of it); the error lists the choices."""
    cls = REWARDS.get(REWARD_ALIASES.get(name, name))
    if cls is None:
        aliases = ", ".join(REWARD_ALIASES)
        raise ConfigError(f"VidurRoutingEnv.reward: must be one of {', '.join(REWARDS)} (or {aliases}), got {name!r}")
    return cls


class FinishedScan:
    """Finds which routed requests have ended (``end`` set), scanning few of them per step.

    Requests are kept per replica in routing order, and a step only scans the replicas the
    caller says may have finished some (see :class:`SLOReward`). A scan stops at the first
    request never scheduled (``scheduled_at`` unset): replicas admit new requests first come,
    first served, so every later one is unscheduled too and cannot have ended. A scan therefore
    costs O(requests admitted), bounded by the KV cache, not by the queue.
    """

    def __init__(self, end: list[float], scheduled_at: list[float], num_replicas: int) -> None:
        self.end = end
        self.scheduled_at = scheduled_at
        self.pending: list[list[int]] = [[] for _ in range(num_replicas)]

    def add(self, rid: int, replica: int) -> None:
        self.pending[replica].append(rid)

    def finished(self, replicas: Sequence[int]) -> list[int]:
        """The requests found ended in ``replicas`` since the last call (now forgotten)."""
        end, scheduled_at = self.end, self.scheduled_at
        finished: list[int] = []
        for r in replicas:
            pending = self.pending[r]
            still: list[int] = []
            i, n = 0, len(pending)
            while i < n:
                rid = pending[i]
                if scheduled_at[rid] < 0.0:
                    break
                if end[rid] >= 0.0:
                    finished.append(rid)
                else:
                    still.append(rid)
                i += 1
            if i < n:
                still += pending[i:]
            self.pending[r] = still
        return finished

    def rest(self) -> list[int]:
        """Every request still tracked (all ended, after a drain)."""
        rest = [rid for lst in self.pending for rid in lst]
        self.pending = [[] for _ in self.pending]
        return rest


@register_reward
class LatencyReward(Reward):
    """``-(area under the number of requests in the system) / scale`` per step (reward="latency").

    Each replica counts its completions and sums their times (``ReplicaStats``), so a step
    costs O(replicas): over ``(t0, t]`` the area is ``n * (t - t0) - (k * t - s)``, with ``n``
    the requests in the system after the decision at ``t0`` and ``k``, ``s`` the number and
    time sum of the completions since.
    """

    name = "latency"
    scale_by = "e2e"
    count_stat: ClassVar[str] = "num_completed"
    time_sum_stat: ClassVar[str] = "completed_time_sum"
    """The ``ReplicaStats`` counters of the event that ends a request's pending time."""

    def __init__(self, table: "RequestTable", replicas: Sequence["Replica"], scale: float,
                 settings: RewardSettings = RewardSettings()) -> None:
        self.replicas = replicas
        self.scale = scale
        self.time = table.arrived_at[0] if len(table) else 0.0
        self.pending = 0
        self.ended, self.ended_time_sum = self._ended()

    def _ended(self) -> tuple[int, float]:
        """Requests ended so far, cluster-wide, and the sum of their end times."""
        count, total = 0, 0.0
        for replica in self.replicas:
            count += getattr(replica.stats, self.count_stat)
            total += getattr(replica.stats, self.time_sum_stat)
        return count, total

    def add(self, rid: int, replica: int) -> None:
        """A request routed at the current decision time."""
        self.pending += 1

    def _area(self, t: float) -> float:
        """Area under the pending count from the last decision to ``t``."""
        count, total = self._ended()
        new, new_sum = count - self.ended, total - self.ended_time_sum
        area = self.pending * (t - self.time) - (new * t - new_sum)
        self.pending -= new
        self.ended, self.ended_time_sum = count, total
        self.time = t
        return area

    def step(self, t: float) -> float:
        return -self._area(t) / self.scale

    def finish(self) -> float:
        """The rest of the area, once the simulator has drained (every request ended)."""
        count, total = self._ended()
        area = (total - self.ended_time_sum) - (count - self.ended) * self.time
        self.pending = 0
        return -area / self.scale


@register_reward
class TTFTReward(LatencyReward):
    """``-(area under the number of requests without their first token) / scale`` (reward="ttft")."""

    name = "ttft"
    scale_by = "ttft"
    count_stat = "num_first_tokens"
    time_sum_stat = "first_token_time_sum"


@register_reward
class LatencyTTFTReward(Reward):
    """The ``latency`` reward plus ``ttft_weight`` times the ``ttft`` area, both over the E2E
    scale (reward="latency_ttft"): the return is ``-(sum(E2E) + w sum(TTFT)) / scale``.

    Why: TTFT is a tenth of E2E or less, so under the latency reward a router that halves
    queueing for the first token gains almost nothing; the weight makes time to first token
    count as production SLOs do, while E2E still holds the rest.
    """

    name = "latency_ttft"
    scale_by = "e2e"

    def __init__(self, table: "RequestTable", replicas: Sequence["Replica"], scale: float,
                 settings: RewardSettings = RewardSettings()) -> None:
        self.e2e = LatencyReward(table, replicas, scale, settings)
        self.ttft = TTFTReward(table, replicas, scale, settings)
        self.weight = settings.ttft_weight

    def add(self, rid: int, replica: int) -> None:
        self.e2e.add(rid, replica)
        self.ttft.add(rid, replica)

    def step(self, t: float) -> float:
        return self.e2e.step(t) + self.weight * self.ttft.step(t)

    def finish(self) -> float:
        return self.e2e.finish() + self.weight * self.ttft.finish()


@register_reward
class TTFTSquaredReward(Reward):
    """``-(area under the summed waits of the requests without their first token) / scale**2``
    per step (reward="ttft_squared"): the return is ``-sum(TTFT**2) / (2 scale**2)``.

    Why: the ``ttft`` reward charges every waiting request one unit per second, so it is blind
    to who waits; a router can lower the mean by parking long prompts on a few replicas, and
    in a burst their waits run to seconds (measured on ``stale1000``'s replay). Here a request
    is charged its wait so far, every second it waits: the charge grows with the wait, so a
    tail costs more than the same total spread evenly. Exact, from running sums: between
    decisions at ``t0 < t`` a request that arrived at ``a`` and is still waiting adds
    ``((t - a)**2 - (t0 - a)**2) / 2``, one whose first token came at ``e`` in between
    ``((e - a)**2 - (t0 - a)**2) / 2``; the replicas sum the arrival times, their squares and
    the squared TTFTs of their first tokens (``ReplicaStats``), so a step costs O(replicas).
    """

    name = "ttft_squared"
    scale_by = "ttft"

    def __init__(self, table: "RequestTable", replicas: Sequence["Replica"], scale: float,
                 settings: RewardSettings = RewardSettings()) -> None:
        self.table = table
        self.replicas = replicas
        self.scale = scale
        self.time = table.arrived_at[0] if len(table) else 0.0
        self.pending = 0
        self.pending_arrivals = 0.0
        """Sum of the arrival times of the requests routed and still without a first token."""
        self.ended = self._ended()

    def _ended(self) -> tuple[int, float, float, float]:
        """First tokens so far, cluster-wide: their count and the sums of their arrival times,
        of those squared, and of their squared TTFTs."""
        count, arrivals, arrivals_sq, waits_sq = 0, 0.0, 0.0, 0.0
        for replica in self.replicas:
            stats = replica.stats
            count += stats.num_first_tokens
            arrivals += stats.first_token_arrival_sum
            arrivals_sq += stats.first_token_arrival_sq_sum
            waits_sq += stats.first_token_wait_sq_sum
        return count, arrivals, arrivals_sq, waits_sq

    def _news(self) -> tuple[int, float, float, float]:
        """The first tokens since the last call (as in :meth:`_ended`), now counted as ended."""
        ended = self._ended()
        news = tuple(now - before for now, before in zip(ended, self.ended))
        self.ended = ended
        return news  # type: ignore[return-value]

    def add(self, rid: int, replica: int) -> None:
        self.pending += 1
        self.pending_arrivals += self.table.arrived_at[rid]

    def step(self, t: float) -> float:
        t0 = self.time
        everyone = (t - t0) * (self.pending * (t + t0) - 2.0 * self.pending_arrivals) / 2.0
        count, arrivals, arrivals_sq, waits_sq = self._news()
        # the ones whose first token came at e in (t0, t] waited from e to t only in `everyone`
        beyond = (count * t * t - 2.0 * t * arrivals + arrivals_sq - waits_sq) / 2.0
        self.pending -= count
        self.pending_arrivals -= arrivals
        self.time = t
        return -(everyone - beyond) / self.scale**2

    def finish(self) -> float:
        """The rest of the area, once the simulator has drained (every request has its first token)."""
        t0 = self.time
        count, arrivals, arrivals_sq, waits_sq = self._news()
        area = (waits_sq - (count * t0 * t0 - 2.0 * t0 * arrivals + arrivals_sq)) / 2.0
        self.pending, self.pending_arrivals = 0, 0.0
        return -area / self.scale**2


@register_reward
class SLOReward(Reward):
    """``-(requests completing in the step that miss the SLO) / scale`` (reward="slo").

    A request meets the SLO when its TTFT is at most ``ttft_s`` and its E2E latency at most
    ``e2e_s`` (a None bound is not checked). The return is minus the number of misses. Which
    requests finished is found by :class:`FinishedScan`, scanning a replica only when its
    in-system count (``num_waiting + num_allocated_requests``) fell below the requests it
    tracks there.
    """

    name = "slo"
    scale_by = None

    @classmethod
    def check(cls, settings: RewardSettings) -> None:
        if settings.slo_ttft_s is None and settings.slo_e2e_s is None:
            raise ConfigError("VidurRoutingEnv: reward='slo' needs slo_ttft_s and/or slo_e2e_s (seconds)")

    def __init__(self, table: "RequestTable", replicas: Sequence["Replica"], scale: float,
                 settings: RewardSettings) -> None:
        ttft_s, e2e_s = settings.slo_ttft_s, settings.slo_e2e_s
        self.scan = FinishedScan(table.completed_at, table.scheduled_at, len(replicas))
        self.table = table
        self.replicas = replicas
        self.scale = scale
        self.ttft_s = float("inf") if ttft_s is None else ttft_s
        self.e2e_s = float("inf") if e2e_s is None else e2e_s

    def add(self, rid: int, replica: int) -> None:
        self.scan.add(rid, replica)

    def _changed(self) -> list[int]:
        pending = self.scan.pending
        return [i for i, r in enumerate(self.replicas) if r.num_waiting + r.num_allocated_requests < len(pending[i])]

    def _misses(self, finished: list[int]) -> int:
        table = self.table
        misses = 0
        for rid in finished:
            arrived = table.arrived_at[rid]
            if table.prefill_completed_at[rid] - arrived > self.ttft_s or table.completed_at[rid] - arrived > self.e2e_s:
                misses += 1
        return misses

    def step(self, t: float) -> float:
        return -self._misses(self.scan.finished(self._changed())) / self.scale

    def finish(self) -> float:
        return -self._misses(self.scan.rest()) / self.scale


# ---------------------------------------------------------------------------------------------
# Isolated service time: a request alone on an idle replica


class IsolatedServiceTime:
    """TTFT and E2E latency of a request served alone on an idle replica (no queueing).

    Prefill runs as the replica's scheduler would run a lone prompt (Sarathi: chunks of
    ``chunk_size`` over the growing KV; vLLM and Orca: the whole prompt in one iteration), from
    the end of its cached prefix when it has one (the tokens a prefix cache hands it), then
    ``output - 1`` single-request decode iterations over KV ``prompt + 1 ... prompt + output -
    1`` (the prefill emits the first token). Decode sums come from a prefix sum over KV lengths
    built once per replica type, so a request costs O(prompt / chunk).
    """

    def __init__(self, spec: "ReplicaConfig", model: "ExecutionTimeModel", max_tokens: int) -> None:
        self.model = model
        self.chunk = spec.chunk_size if spec.scheduler == "sarathi" else None
        steps = [model.iteration_time(1, kv, (), ()) for kv in range(max_tokens + 1)]
        self.decode_prefix = np.concatenate([[0.0], np.cumsum(steps)])
        """decode_prefix[k] = sum of single-decode iteration times at KV 0 .. k-1."""

    def prefill(self, prompt: int, cached: int = 0) -> float:
        chunk = prompt - cached if self.chunk is None else self.chunk
        total, done = 0.0, cached
        while done < prompt:
            q = min(chunk, prompt - done)
            total += self._chunk_time(q, done)
            done += q
        return total

    def _chunk_time(self, q: int, kv: int) -> float:
        """One prefill chunk, timed as the simulator does (the keying decides how a one-token chunk is keyed)."""
        return self.model.iteration_time(0, 0, (q,), (kv,))

    def latencies(self, prompts: np.ndarray, outputs: np.ndarray,
                  cached: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(TTFT, E2E) arrays in seconds for the given prompt and output lengths, each prompt
        prefilled from the end of its ``cached`` tokens (None: from its start)."""
        prompts = np.asarray(prompts, dtype=np.int64)
        outputs = np.asarray(outputs, dtype=np.int64)
        starts = np.zeros_like(prompts) if cached is None else np.asarray(cached, dtype=np.int64)
        memo: dict[tuple[int, int], float] = {}
        ttft = np.array([memo[key] if key in memo else memo.setdefault(key, self.prefill(*key))
                         for key in zip(prompts.tolist(), starts.tolist())])
        decode = self.decode_prefix[prompts + outputs] - self.decode_prefix[prompts + 1]
        return ttft, ttft + decode


def isolated_latencies(specs: Sequence["ReplicaConfig"], models: Sequence["ExecutionTimeModel"], max_tokens: int,
                       prompts: np.ndarray, outputs: np.ndarray,
                       cached: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(TTFT, E2E) of each request served alone on the replica where its E2E is lowest, with
    ``cached`` prompt tokens already there on replicas that cache prefixes (None: none)."""
    seen: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    for spec, model in zip(specs, models):
        hits = cached if spec.prefix_caching else None
        key = (id(model), spec.scheduler, spec.chunk_size, hits is not None)
        if key not in seen:
            seen[key] = IsolatedServiceTime(spec, model, max_tokens).latencies(prompts, outputs, hits)
    ttfts = np.stack([t for t, _ in seen.values()])
    e2es = np.stack([e for _, e in seen.values()])
    best = np.argmin(e2es, axis=0)
    columns = np.arange(e2es.shape[1])
    return ttfts[best, columns], e2es[best, columns]
