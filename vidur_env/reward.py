"""Rewards of the routing env, and the isolated (no-queueing) service time they are scaled by.

Latency rewards integrate a count of pending requests over time, exactly: between two
decisions at ``t0 < t1`` the area under the count is ``n * (t1 - t0) - sum(t1 - e)`` over the
requests whose end time ``e`` fell in between, with ``n`` the count after the decision at
``t0``. Summed over an episode and its final drain, that is ``sum(end - arrival)`` over its
requests: minus the return is the total latency (E2E or TTFT) divided by the scale.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from vidur_env.config import ReplicaConfig
    from vidur_env.replica import Replica
    from vidur_env.request_table import RequestTable
    from vidur_env.time_model import ExecutionTimeModel

REWARDS = ("latency", "ttft", "slo")
"""Reward kinds the env accepts (``e2e`` is an alias of ``latency``)."""


class PendingArea:
    """Exact integral over time of the number of routed requests whose ``end`` time is unset.

    Requests are kept per replica in routing order, and a step only scans the replicas the
    caller says may have finished some (see :class:`LatencyReward`). A scan stops at the first
    request never scheduled (``scheduled_at`` unset): replicas admit new requests first come,
    first served, so every later one is unscheduled too and cannot have ended. A scan therefore
    costs O(requests admitted), bounded by the KV cache, not by the queue.
    """

    def __init__(self, end: list[float], scheduled_at: list[float], num_replicas: int, start: float) -> None:
        self.end = end
        self.scheduled_at = scheduled_at
        self.pending: list[list[int]] = [[] for _ in range(num_replicas)]
        self.count = 0
        self.time = start

    def add(self, rid: int, replica: int) -> None:
        """A request routed at the current time (``self.time``)."""
        self.pending[replica].append(rid)
        self.count += 1

    def advance(self, t: float, replicas: Sequence[int]) -> tuple[float, list[int]]:
        """Area since the last call up to ``t``, and the requests found finished in ``replicas``."""
        end, scheduled_at = self.end, self.scheduled_at
        area = self.count * (t - self.time)
        finished: list[int] = []
        for r in replicas:
            pending = self.pending[r]
            still: list[int] = []
            i, n = 0, len(pending)
            while i < n:
                rid = pending[i]
                if scheduled_at[rid] < 0.0:
                    break
                e = end[rid]
                if e >= 0.0:
                    area -= t - e
                    finished.append(rid)
                else:
                    still.append(rid)
                i += 1
            if i < n:
                still += pending[i:]
            self.pending[r] = still
        self.count -= len(finished)
        self.time = t
        return area, finished

    def finish(self) -> tuple[float, list[int]]:
        """Area from the last call until every pending request has ended (after a drain)."""
        end = self.end
        finished = [rid for lst in self.pending for rid in lst]
        area = sum(end[rid] - self.time for rid in finished)
        self.pending = [[] for _ in self.pending]
        self.count = 0
        return area, finished


class LatencyReward:
    """``-(area under the number of requests in the system) / scale`` per step (reward="latency").

    A replica is scanned for completions only when its in-system count (``num_waiting +
    num_allocated_requests``) is below the number of requests the tracker holds for it.
    """

    def __init__(self, table: "RequestTable", replicas: Sequence["Replica"], scale: float) -> None:
        start = table.arrived_at[0] if len(table) else 0.0
        self.area = PendingArea(table.completed_at, table.scheduled_at, len(replicas), start)
        self.replicas = replicas
        self.scale = scale

    def add(self, rid: int, replica: int) -> None:
        self.area.add(rid, replica)

    def _changed(self) -> list[int]:
        pending = self.area.pending
        return [i for i, r in enumerate(self.replicas) if r.num_waiting + r.num_allocated_requests < len(pending[i])]

    def step(self, t: float) -> float:
        area, _ = self.area.advance(t, self._changed())
        return -area / self.scale

    def finish(self) -> float:
        area, _ = self.area.finish()
        return -area / self.scale


class TTFTReward(LatencyReward):
    """``-(area under the number of requests without their first token) / scale`` (reward="ttft").

    A replica is scanned when it started an iteration since the last step
    (``stats.num_iterations``) or is idle: a first token comes at the end of an iteration, after
    which the replica either starts another or goes idle.
    """

    def __init__(self, table: "RequestTable", replicas: Sequence["Replica"], scale: float) -> None:
        super().__init__(table, replicas, scale)
        self.area = PendingArea(table.prefill_completed_at, table.scheduled_at, len(replicas), self.area.time)
        self.iterations = [r.stats.num_iterations for r in replicas]

    def _changed(self) -> list[int]:
        changed = []
        for i, r in enumerate(self.replicas):
            n = r.stats.num_iterations
            if n != self.iterations[i] or not r.is_busy:
                self.iterations[i] = n
                changed.append(i)
        return changed


class SLOReward(LatencyReward):
    """``-(requests completing in the step that miss the SLO) / scale`` (reward="slo").

    A request meets the SLO when its TTFT is at most ``ttft_s`` and its E2E latency at most
    ``e2e_s`` (a None bound is not checked). The return is minus the number of misses.
    """

    def __init__(self, table: "RequestTable", replicas: Sequence["Replica"], scale: float,
                 ttft_s: float | None, e2e_s: float | None) -> None:
        super().__init__(table, replicas, scale)
        self.table = table
        self.ttft_s = float("inf") if ttft_s is None else ttft_s
        self.e2e_s = float("inf") if e2e_s is None else e2e_s

    def _misses(self, finished: list[int]) -> int:
        table = self.table
        misses = 0
        for rid in finished:
            arrived = table.arrived_at[rid]
            if table.prefill_completed_at[rid] - arrived > self.ttft_s or table.completed_at[rid] - arrived > self.e2e_s:
                misses += 1
        return misses

    def step(self, t: float) -> float:
        _, finished = self.area.advance(t, self._changed())
        return -self._misses(finished) / self.scale

    def finish(self) -> float:
        _, finished = self.area.finish()
        return -self._misses(finished) / self.scale


# ---------------------------------------------------------------------------------------------
# Isolated service time: a request alone on an idle replica


class IsolatedServiceTime:
    """TTFT and E2E latency of a request served alone on an idle replica (no queueing).

    Prefill runs as the replica's scheduler would run a lone prompt (Sarathi: chunks of
    ``chunk_size`` over the growing KV; vLLM and Orca: the whole prompt in one iteration), then
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

    def prefill(self, prompt: int) -> float:
        chunk = prompt if self.chunk is None else self.chunk
        total, done = 0.0, 0
        while done < prompt:
            q = min(chunk, prompt - done)
            total += self._chunk_time(q, done)
            done += q
        return total

    def _chunk_time(self, q: int, kv: int) -> float:
        """One prefill chunk; a one-token chunk is timed as a decode, as the simulator does."""
        if q == 1:
            return self.model.iteration_time(1, kv, (), ())
        return self.model.iteration_time(0, 0, (q,), (kv,))

    def latencies(self, prompts: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(TTFT, E2E) arrays in seconds for the given prompt and output lengths."""
        prompts = np.asarray(prompts, dtype=np.int64)
        outputs = np.asarray(outputs, dtype=np.int64)
        cache: dict[int, float] = {}
        ttft = np.array([cache[p] if p in cache else cache.setdefault(p, self.prefill(int(p))) for p in prompts])
        decode = self.decode_prefix[prompts + outputs] - self.decode_prefix[prompts + 1]
        return ttft, ttft + decode


def isolated_latencies(specs: Sequence["ReplicaConfig"], models: Sequence["ExecutionTimeModel"], max_tokens: int,
                       prompts: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(TTFT, E2E) of each request served alone on the replica where its E2E is lowest."""
    seen: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    for spec, model in zip(specs, models):
        key = (id(model), spec.scheduler, spec.chunk_size)
        if key not in seen:
            seen[key] = IsolatedServiceTime(spec, model, max_tokens).latencies(prompts, outputs)
    ttfts = np.stack([t for t, _ in seen.values()])
    e2es = np.stack([e for _, e in seen.values()])
    best = np.argmin(e2es, axis=0)
    columns = np.arange(e2es.shape[1])
    return ttfts[best, columns], e2es[best, columns]
