"""Sarathi-Serve chunked prefill, Vidur's default replica scheduler
(``vidur/scheduler/replica_scheduler/sarathi_replica_scheduler.py``)."""
from __future__ import annotations

from collections import deque

from vidur_env.schedulers.base import Batch, ReplicaScheduler, SteadyRun


class SarathiScheduler(ReplicaScheduler):
    """Decodes first, then partial prefills, then new requests, within a token budget of
    ``chunk_size`` per iteration; each prefill gets min(remaining prompt, budget left)."""

    def prefill_chunk(self, decodes: int) -> int:
        """The token budget left after the decodes (each decode takes one token of it), at
        least one token (a budget the decodes fill would starve the prompt)."""
        return max(self.limits.chunk_size - decodes, 1)

    def _get_next_batch(self) -> Batch:
        decodes, partial = self._take_running()
        table = self.table
        processed = table.processed
        budget = self.limits.chunk_size - len(decodes)
        prefills: list[int] = []
        chunks: list[int] = []
        skipped: list[int] = []
        for rid in partial:
            q = min(table.prefill[rid] - processed[rid], budget)
            if q <= 0:
                skipped.append(rid)
                continue
            budget -= q
            prefills.append(rid)
            chunks.append(q)
        if skipped:
            self.running = sorted(skipped + self.running, key=table.arrived_at.__getitem__)
        waiting = self.waiting
        kv = self.kv
        cap = self.max_micro_batch_size
        while waiting:
            if kv.num_allocated_requests == self.limits.batch_size_cap:
                break
            if len(decodes) + len(prefills) == cap:
                break
            rid = waiting[0]
            if not kv.can_admit(rid):
                break
            if min(table.prefill[rid] - processed[rid], budget) <= 0:
                break
            self._admit_waiting()
            q = min(table.prefill[rid] - processed[rid], budget)  # after the prefix cache's hits
            budget -= q
            prefills.append(rid)
            chunks.append(q)
        return decodes, prefills, chunks

    def _take_running(self) -> tuple[list[int], list[int]]:
        """Split the running list into this iteration's decodes and partial prefills.

        Leaves in ``self.running`` what Vidur leaves in ``_preempted_requests`` (sorted by
        arrival). The lazy path applies when every running request fits in the batch and no
        decode can run out of blocks; otherwise Vidur's loop runs request by request.
        """
        pool = self.running
        prefill_done = self.table.prefill_done
        if len(pool) <= self.max_micro_batch_size:
            decodes = [rid for rid in pool if prefill_done[rid]]
            if self._lazy_decodes_fit(decodes):
                self.batch_lazy = True
                partial = [rid for rid in pool if not prefill_done[rid]] if len(decodes) < len(pool) else []
                self.running = []
                return decodes, partial
        self.batch_lazy = False
        self._write_back_decodes()
        decodes, partial = [], []
        queue = deque(pool)
        while queue:
            if len(decodes) == self.max_micro_batch_size:
                break
            rid = queue.popleft()
            if not prefill_done[rid]:
                partial.append(rid)
            elif self._schedule_running_decode(rid, queue):
                decodes.append(rid)
        self.running = sorted(queue, key=self.table.arrived_at.__getitem__)
        return decodes, partial

    def steady_run(self) -> SteadyRun | None:
        running = self.running
        if len(running) > self.max_micro_batch_size:
            return None
        decoding = self.decoding
        partial = None
        if decoding.size != len(running):
            if len(running) - decoding.size != 1 or self.limits.chunk_size <= decoding.size:
                return None
            partial = next(rid for rid in reversed(running) if rid not in decoding)  # usually last
        waiting = self.waiting
        if (
            not waiting
            or self.kv.num_allocated_requests == self.limits.batch_size_cap
            or len(running) == self.max_micro_batch_size
            or not self.kv.can_admit(waiting[0])
        ):
            return (partial, False, False) if running else None
        if partial is not None:
            return partial, True, False
        if len(running) >= self.limits.chunk_size:
            return None, False, False  # the decodes use the whole budget: the head gets no tokens
        return self._admission_run()

    def _admission_run(self) -> SteadyRun | None:
        """The run whose first iteration admits the head of the queue next to the decode set,
        or None when ``_get_next_batch`` must decide because the head's blocks do not fit
        beside this iteration's decode growth. (If a second request would join that iteration,
        the loop stops before running it, and the next formation finds the head already
        admitted, exactly as its own formation would have left it.)"""
        waiting, kv = self.waiting, self.kv
        head = waiting[0]
        growth = self.decoding.growth.at(self.decoding.tick)
        if kv.free_after(head, growth) < max(kv.watermark_blocks, 1):
            return None
        gated = (
            len(waiting) > 1
            and kv.num_allocated_requests + 1 < self.limits.batch_size_cap
            and len(self.running) + 1 < self.max_micro_batch_size
            # with prefix caching, admitting the head can make blocks the next request hits
            # referenced, so its admission cannot be ruled out here: gated (safe, only slower)
            and (kv.prefix_caching or kv.can_admit(waiting[1], growth + kv.admission_blocks(head)))
        )
        return head, gated, True
