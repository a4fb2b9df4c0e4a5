"""Orca's iteration-level scheduler as Vidur ports it (``vidur/scheduler/replica_scheduler/orca_replica_scheduler.py``)."""
from __future__ import annotations

from vidur_env.kv_cache import KVCache, ReservingKVCache
from vidur_env.request_table import RequestTable
from vidur_env.schedulers.base import Batch, ReplicaScheduler, SchedulerLimits, SteadyRun

PREFIX_CACHING_NOTE = ("prefix caching does not apply to the orca scheduler: each request reserves max_tokens "
                       "of KV up front, so shared blocks would save no memory; use sarathi or vllm")
"""Why Orca has no prefix caching (configs reject the combination with this text)."""


class OrcaScheduler(ReplicaScheduler):
    """Iteration-level batches mixing whole prefills and decodes, up to the planner's batch
    size; each admitted request reserves ``max_tokens`` of KV up front, so there is never a
    preemption."""

    def __init__(self, table: RequestTable, limits: SchedulerLimits) -> None:
        super().__init__(table, limits)
        self.max_micro_batch_size = limits.max_batch_size

    def _make_kv_cache(self) -> KVCache:
        """Orca's reservation; prefix caching does not apply (see :data:`PREFIX_CACHING_NOTE`)."""
        if self.limits.prefix_caching:
            raise ValueError(PREFIX_CACHING_NOTE)
        return ReservingKVCache(self.table, self.limits.num_blocks, self.limits.watermark_fraction,
                                self.limits.max_tokens)

    def _get_next_batch(self) -> Batch:
        table = self.table
        kv = self.kv
        cap = self.max_micro_batch_size
        self.batch_lazy = self.group_decodes and len(self.running) <= cap
        if not self.batch_lazy:
            self._write_back_decodes()
        decodes = self.running[:cap]
        self.running = self.running[cap:]
        prefills: list[int] = []
        chunks: list[int] = []
        waiting = self.waiting
        while waiting and len(decodes) + len(prefills) < cap:
            if not kv.can_admit(waiting[0]):
                break
            rid = self._admit_waiting()
            prefills.append(rid)
            chunks.append(table.prefill[rid])
        return decodes, prefills, chunks

    def steady_run(self) -> SteadyRun | None:
        running = self.running
        if not running or len(running) > self.max_micro_batch_size or self.decoding.size != len(running):
            return None
        if self.waiting and len(running) < self.max_micro_batch_size:
            if self.kv.can_admit(self.waiting[0]):
                return None
        return None, False, False
