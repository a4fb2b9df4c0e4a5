"""One replica of the cluster: its clock, the batch in flight, and the public view routers read.

The replica runs the iterations its scheduler (:mod:`vidur_env.schedulers`) forms, one after
the other with no gap, as Vidur's replica stage does with one pipeline stage. The cluster
advances it to each arrival with :meth:`Replica.advance_to`; where the scheduler offers a
steady run, the decode-run loop (:mod:`vidur_env.decode_runs`) runs those iterations instead
of the general path (one ``_get_next_batch`` per iteration), and may leave one in flight at
the horizon.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from math import inf

from vidur_env.decode_runs import DecodeRuns
from vidur_env.kv_cache import KVCache
from vidur_env.replica_stats import ReplicaStats
from vidur_env.request_table import UNSET, RequestTable
from vidur_env.schedulers import SCHEDULERS, ReplicaScheduler, SchedulerLimits
from vidur_env.time_model import ExecutionTimeModel


class Replica:
    """Clock and batch in flight of one replica; queues, KV and batching are its ``scheduler``'s."""

    fast_forward: bool = True
    """Use the decode-run loop; turning it off must not change any result."""

    def __init__(self, replica_id: int, time_model: ExecutionTimeModel, scheduler: ReplicaScheduler) -> None:
        self.replica_id = replica_id
        self.time_model = time_model
        self.scheduler = scheduler
        self.table = scheduler.table
        self.kv: KVCache = scheduler.kv
        self.num_blocks = self.kv.num_blocks
        self.stats: ReplicaStats = scheduler.stats
        self.runs = DecodeRuns(scheduler, time_model)
        self.batch_decodes: list[int] = []
        self.batch_prefills: list[int] = []
        self.batch_chunks: list[int] = []
        """The batch in flight: decoding requests, then prefilling ones with their chunk sizes."""
        self.batch_end = inf
        self.pending_at = inf
        """Time at which an idle replica has work to schedule (formation deferred to it)."""

    # ----------------------------------------------------------------- public view
    @property
    def is_busy(self) -> bool:
        return self.batch_end != inf

    @property
    def batch(self) -> list[int]:
        """Ids of the requests in the batch in flight, in Vidur's batch order."""
        if self.runs.suspended is not None:
            return self.runs.batch()
        return self.batch_decodes + self.batch_prefills

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def waiting_prompt_tokens(self) -> int:
        return self.scheduler.waiting_prompt_tokens

    @property
    def num_in_batch(self) -> int:
        if self.runs.suspended is not None:
            return len(self.scheduler.running)  # the suspended batch (see DecodeRuns), inlined: read every step
        return len(self.batch_decodes) + len(self.batch_prefills)

    @property
    def num_allocated_requests(self) -> int:
        return self.kv.num_allocated_requests

    @property
    def allocated_blocks(self) -> int:
        return self.kv.allocated_blocks

    @property
    def kv_utilization(self) -> float:
        return self.kv.utilization

    @property
    def group_decodes(self) -> bool:
        """Advance decoding requests as a group (the scheduler's switch; off also disables
        the decode-run loop). Turning it off must not change any result."""
        return self.scheduler.group_decodes

    @group_decodes.setter
    def group_decodes(self, on: bool) -> None:
        self.scheduler.group_decodes = on

    # ------------------------------------------------------------ arrivals / time
    def add_request(self, rid: int, now: float) -> None:
        """Queue a routed request; an idle replica will form a batch once time moves past ``now``."""
        suspended = self.runs.suspended
        if suspended is not None:
            suspended.queue_changed = True
        self.scheduler.add_request(rid)
        if self.batch_end == inf and now < self.pending_at:
            self.pending_at = now

    def advance_to(self, horizon: float) -> None:
        """Run every iteration that ends at or before ``horizon``.

        A batch ending exactly at ``horizon`` is finished but the next one is not formed,
        so a request arriving at that same instant can still join it (Vidur orders a batch
        end before the arrival's scheduling event at equal times).
        """
        runs = self.runs
        scheduler = self.scheduler
        while True:
            if self.batch_end != inf:
                if self.batch_end > horizon:
                    return
                now = self.batch_end
                self.batch_end = inf
                if runs.suspended is not None:
                    if runs.resume_decode(now, horizon):
                        self.batch_end = runs.suspended.end
                        return
                    now = runs.run(now, horizon)
                    if runs.suspended is not None:
                        self.batch_end = runs.suspended.end
                        continue
                else:  # the batch in flight has ended: the scheduler advances its requests
                    scheduler.on_batch_end(self.batch_decodes, self.batch_prefills, self.batch_chunks, now)
                    self.batch_decodes, self.batch_prefills, self.batch_chunks = [], [], []
            else:
                if self.pending_at >= horizon:
                    return
                now = self.pending_at
            self.pending_at = inf
            if now < horizon and self.fast_forward and scheduler.group_decodes:
                run = scheduler.steady_run()
                if run is not None:
                    tick = scheduler.decoding.tick
                    now = runs.run(now, horizon, run)
                    if runs.suspended is not None:
                        self.batch_end = runs.suspended.end
                        continue
                    if scheduler.decoding.tick != tick:  # the run ended (a completion, ...): look again
                        self.pending_at = now
                        continue
            if now >= horizon:
                self.pending_at = now
                return
            self._start_batch(now)

    def advance_through(self, horizons: Sequence[float], start: int, end: int) -> None:
        """Advance to each of ``horizons[start:end]`` (non-decreasing) at which the replica has
        an event due, as the cluster does at each arrival: at or after its next event (after
        it, for a batch to form at that very instant). A suspended decode run goes through as
        many as it can in one :meth:`~vidur_env.decode_runs.DecodeRuns.replay`."""
        runs = self.runs
        while True:
            if runs.suspended is not None:
                start = runs.replay(horizons, start, end)
                self.batch_end = runs.suspended.end
            j = bisect_left(horizons, min(self.batch_end, self.pending_at), start, end)
            if j == end:
                return
            horizon = horizons[j]
            if self.batch_end <= horizon or self.pending_at < horizon:
                self.advance_to(horizon)
                start = j + 1
            else:
                start = bisect_right(horizons, horizon, j, end)

    # ---------------------------------------------------------------- iterations
    def _start_batch(self, now: float) -> None:
        scheduler = self.scheduler
        decodes, prefills, chunks = scheduler._get_next_batch()  # the scheduler's one required method
        if not decodes and not prefills:
            return
        processed = self.table.processed
        scheduled_at = self.table.scheduled_at
        num_decodes = len(decodes)
        if scheduler.batch_lazy:
            decode_kv = scheduler.decoding.kv_sum() if decodes else 0
        else:
            decode_kv = sum(map(processed.__getitem__, decodes))
        prefill_chunks: list[int] = []
        prefill_kv: list[int] = []
        for rid, q in zip(prefills, chunks):
            if scheduled_at[rid] == UNSET:
                scheduled_at[rid] = now
            prefill_chunks.append(q)
            prefill_kv.append(processed[rid])
        duration = self.time_model.iteration_time(num_decodes, decode_kv, tuple(prefill_chunks), tuple(prefill_kv))
        self.batch_decodes = decodes
        self.batch_prefills = prefills
        self.batch_chunks = chunks
        self.batch_end = now + duration
        prefill_tokens = sum(chunks)
        allocated = self.kv.allocated_blocks
        self.stats.record(1, len(decodes) + len(prefills), len(decodes) + prefill_tokens, prefill_tokens,
                          duration, allocated * duration, allocated)


def make_replica(replica_id: int, table: RequestTable, time_model: ExecutionTimeModel, scheduler: str,
                 limits: SchedulerLimits) -> Replica:
    """A replica running the scheduler registered as ``scheduler``."""
    return Replica(replica_id, time_model, SCHEDULERS[scheduler](table, limits))
