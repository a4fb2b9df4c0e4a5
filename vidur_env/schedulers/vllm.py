"""vLLM's scheduler as Vidur ports it (``vidur/scheduler/replica_scheduler/vllm_replica_scheduler.py``)."""
from __future__ import annotations

from collections import deque

from vidur_env.schedulers.base import Batch, ReplicaScheduler, SteadyRun


class VLLMScheduler(ReplicaScheduler):
    """A prefill-only batch of whole prompts whenever one can be admitted, else a decode batch
    of every running request in arrival order, preempting the latest arrived when short of blocks."""

    prefill_with_decodes = False

    def _prompt_batch_fits(self, prompts: list[int], q: int) -> bool:
        """Whether a prompt of ``q`` tokens joins a prefill batch of ``prompts`` within
        ``max_tokens_in_batch`` (``vllm_batch_rule``: padded to the longest, or summed)."""
        limit = self.limits.max_tokens_in_batch
        if self.limits.vllm_batch_rule == "sum":
            return sum(prompts) + q <= limit
        return (len(prompts) + 1) * max(max(prompts, default=0), q) <= limit

    def _tokens_to_compute(self, rid: int) -> int:
        """Prompt tokens a waiting request computes when admitted: all of them, less the prefix
        cache's hits. vLLM counts only these against its token budget (v1 scheduler:
        ``num_new_tokens = request.num_tokens - num_computed_tokens`` after
        ``get_computed_blocks``), so ``max_tokens_in_batch`` applies to them here."""
        kv = self.kv
        if kv.prefix_caching:
            return self.table.prefill[rid] - kv.hit_tokens_at_admission(rid)
        return self.table.prefill[rid]

    def _get_next_batch(self) -> Batch:
        kv = self.kv
        prefills: list[int] = []
        chunks: list[int] = []
        waiting = self.waiting
        while waiting:
            rid = waiting[0]
            q = self._tokens_to_compute(rid)
            if not kv.can_admit(rid) or not self._prompt_batch_fits(chunks, q):
                break
            if kv.num_allocated_requests == self.limits.batch_size_cap:
                break
            if len(prefills) == self.max_micro_batch_size:
                break
            self._admit_waiting()
            prefills.append(rid)
            chunks.append(q)  # == prefill - processed after admission
        self.batch_lazy = self.group_decodes  # a prompt batch leaves the decodes waiting
        if prefills:
            return [], prefills, chunks
        pool = self.decode_run_order()
        if len(pool) <= self.max_micro_batch_size and self._lazy_decodes_fit(pool):
            self.running = []
            return pool, [], []
        self.batch_lazy = False
        self._write_back_decodes()
        decodes: list[int] = []
        queue = deque(pool)
        while queue:
            if len(decodes) == self.max_micro_batch_size:
                break
            rid = queue.popleft()
            if self._schedule_running_decode(rid, queue):
                decodes.append(rid)
        self.running = list(queue)
        return decodes, [], []

    def decode_run_order(self) -> list[int]:
        self.running.sort(key=self.table.arrived_at.__getitem__)
        return self.running

    def steady_run(self) -> SteadyRun | None:
        running = self.running
        if not running or len(running) > self.max_micro_batch_size or self.decoding.size != len(running):
            return None
        if not self.waiting:
            return None, False, False
        rid = self.waiting[0]
        if (
            not self.kv.can_admit(rid)
            or not self._prompt_batch_fits([], self._tokens_to_compute(rid))
            or self.kv.num_allocated_requests == self.limits.batch_size_cap
        ):
            return None, False, False
        return None
