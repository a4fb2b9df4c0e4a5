"""What every replica scheduler shares: Vidur's ``BaseReplicaScheduler`` on a request table.

A scheduler owns a replica's queues and KV cache and forms its batches; the replica
(:mod:`vidur_env.replica`) owns the clock and the batch in flight. The queues are Vidur's:
``waiting`` is ``_request_queue`` (requests holding no KV, restarted ones at the front) and
``running`` is ``_preempted_requests`` (requests holding KV, not in the batch in flight).

A subclass implements one method, :meth:`ReplicaScheduler._get_next_batch`, as a port of
Vidur's, and may offer the steady-run hook :meth:`ReplicaScheduler.steady_run`.

The fast-path protocol
----------------------
Two fast paths run beside Vidur's per-request path and must not change any result
(``tests/test_simulator.py::test_fast_paths_change_no_result`` holds every scheduler to it).

1. *Grouped decodes* (on while ``group_decodes``). Requests past their prefill that hold KV
   are members of ``decoding`` (a :class:`~vidur_env.decode_set.DecodeSet`), which advances
   them all by one counter; their ``processed`` and ``blocks`` in the table are stale while
   they are. ``_get_next_batch`` therefore takes the decodes of ``running`` one of two ways:

   * *lazily*: when :meth:`_lazy_decodes_fit` returns True (every decode of ``running`` is
     batched and none can run short of a block; the iteration's block growth is then
     allocated), the batch takes them as they are, and ``batch_lazy`` is True;
   * *exactly*: call :meth:`_write_back_decodes` first (the table becomes exact), set
     ``batch_lazy`` False, and run Vidur's per-request loop; :meth:`on_batch_end` hands the
     decodes back to the group afterwards.

   A batch of prefills only (vLLM) leaves the decodes in ``running`` untouched and may be
   lazy too. Prefills are always exact: ``processed`` of a prefilling request is current.

2. *Steady runs* (the decode-run loop of :mod:`vidur_env.decode_runs`, on while the replica's
   ``fast_forward`` and ``group_decodes``). Before forming a batch the replica asks
   :meth:`steady_run` whether the coming batches are the whole decode set (plus at most one
   partial prefill) with nothing admitted. The default answer, None, means "form the batch
   with ``_get_next_batch``", so a scheduler without the hook is correct, only slower.

   With prefix caching (:class:`~vidur_env.kv_cache.PrefixKVCache`) the cache's content
   changes only at an admission, a prefill's completion and a release, each of which starts
   or ends a steady run's segment or happens in ``_get_next_batch``; eviction is settled
   lazily in the order eager eviction takes. A formation allocates the decodes' growth (which
   may evict) before it admits, so a run that admits passes that growth to the admission
   (:meth:`ReplicaScheduler.admit_head`); and admitting one request can make blocks the next
   one hits referenced, so with caching a run never rules out a second admission.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass

from vidur_env.decode_set import DecodeSet
from vidur_env.hardware import DEFAULT_BATCH_SIZE_CAP, DEFAULT_MAX_TOKENS
from vidur_env.kv_cache import KVCache, PrefixKVCache
from vidur_env.replica_stats import ReplicaStats
from vidur_env.request_table import UNSET, RequestTable

Batch = tuple[list[int], list[int], list[int]]
"""A formed batch: (decoding request ids, prefilling request ids, their chunk sizes)."""

SteadyRun = tuple["int | None", bool, bool]
"""What :meth:`ReplicaScheduler.steady_run` answers when a steady run may start: (the one
partial prefill in the steady batch or None, whether admission is held off only by the token
budget (``gated``), whether that partial is the head of the queue, which the run's first
iteration admits)."""


VLLM_BATCH_RULES = ("padded", "sum")
"""vLLM's prefill-batch token rules (:attr:`SchedulerLimits.vllm_batch_rule`): Vidur main's padded
(batch length x longest prompt) and 0.0.26's sum."""


@dataclass(frozen=True)
class SchedulerLimits:
    """Knobs of a replica's batching scheduler and KV cache, with Vidur's defaults (which
    :class:`~vidur_env.config.ReplicaConfig` takes from here)."""

    num_blocks: int
    max_batch_size: int
    """Request slots from the memory planner (used by Orca)."""
    batch_size_cap: int = DEFAULT_BATCH_SIZE_CAP
    chunk_size: int = 512
    """Sarathi's token budget per iteration."""
    max_tokens_in_batch: int = 4096
    """vLLM's limit on the tokens of one prefill batch."""
    vllm_batch_rule: str = VLLM_BATCH_RULES[0]
    """'padded': Vidur main, batch_len * longest prompt <= limit; 'sum': Vidur 0.0.26, sum of prompts."""
    max_tokens: int = DEFAULT_MAX_TOKENS
    """Longest request; Orca reserves this many tokens of KV per request at admission."""
    watermark_fraction: float = 0.01
    prefix_caching: bool = False
    """vLLM's automatic prefix caching (:class:`~vidur_env.kv_cache.PrefixKVCache`)."""


class ReplicaScheduler(ABC):
    """Queues, KV cache and batch formation of one replica (see the module docstring)."""

    prefill_with_decodes: bool = True
    """Whether a prompt's prefill shares its iterations with the running decodes (false for
    prefill-only batches); with :meth:`prefill_chunk`, what one prompt occupies a replica for
    (the observation's ``fluid_ttft``)."""

    def prefill_chunk(self, decodes: int) -> int | None:
        """Prompt tokens one iteration prefills alongside ``decodes`` decodes (None: the whole prompt)."""
        return None

    def __init__(self, table: RequestTable, limits: SchedulerLimits) -> None:
        self.table = table
        self.limits = limits
        self.stats = ReplicaStats()
        self.kv = self._make_kv_cache()
        self.max_micro_batch_size = limits.batch_size_cap
        self.waiting: deque[int] = deque()
        """Vidur's ``_request_queue``: requests holding no KV, restarted ones at the front."""
        self.waiting_prompt_tokens = 0
        self.running: list[int] = []
        """Vidur's ``_preempted_requests``: requests holding KV, not in the batch in flight."""
        self.decoding = DecodeSet(table, self.kv)
        """Requests of ``running`` (and of a lazy batch in flight) that are past their prefill."""
        self.group_decodes = True
        """Advance decoding requests as a group; off runs Vidur's per-request path for every
        iteration (and disables the decode-run loop). Turning it off must not change any result."""
        self.batch_lazy = False
        """Whether the batch in flight advances ``decoding`` as a whole (else exact path)."""

    def _make_kv_cache(self) -> KVCache:
        """The cache policy: blocks of the prompt at admission, one more per block boundary;
        with prefix caching, shared full blocks (a separate class, so the caching-off path does
        no cache work)."""
        cache = PrefixKVCache if self.limits.prefix_caching else KVCache
        return cache(self.table, self.limits.num_blocks, self.limits.watermark_fraction)

    # ------------------------------------------------------------- formation
    @abstractmethod
    def _get_next_batch(self) -> Batch:
        """Vidur's ``_get_next_batch``: take the next batch out of ``waiting`` and ``running``,
        allocating its KV, honouring the grouped-decode protocol (module docstring). The
        replica calls it whenever it is idle with work to do (Vidur's ``on_schedule``); empty
        lists mean nothing can run."""

    def steady_run(self) -> SteadyRun | None:
        """Whether the coming batches are the whole decode set (plus, for Sarathi, one partial
        prefill, possibly admitted by the first of them) with nothing else admitted, and if so
        which partial and whether admission is held off only by the token budget. None (the
        default) when ``_get_next_batch`` must form the batch: no fast path.

        While a steady run holds, nothing changes the batch until a request completes, the
        prefill finishes, memory runs short, or the horizon is reached, so the decode-run loop
        may take over. It needs every decoding request of ``running`` in ``decoding``.
        """
        return None

    def decode_run_order(self) -> list[int]:
        """The running list in the order the scheduler batches it (the decode-run loop puts it
        so before it starts)."""
        return self.running

    # ---------------------------------------------------------------- queues
    def add_request(self, rid: int) -> None:
        """Vidur's ``add_request``: queue a routed request."""
        self.waiting.append(rid)
        self.waiting_prompt_tokens += self.table.prefill[rid]

    def _pop_waiting(self) -> int:
        rid = self.waiting.popleft()
        self.waiting_prompt_tokens -= self.table.prefill[rid]
        return rid

    def _admit_waiting(self) -> int:
        """Take the head of the queue and allocate its KV (Vidur's ``_allocate_request``)."""
        rid = self._pop_waiting()
        self.kv.allocate(rid)
        return rid

    def admit_head(self, now: float, growth: int) -> None:
        """Admit the head of the queue into the running list as a partial prefill starting at
        ``now`` (what Sarathi's batch formation does to it, in the same order), before the
        ``growth`` blocks of the decodes of the same iteration are allocated."""
        rid = self._pop_waiting()
        self.kv.allocate(rid, growth)
        if self.table.scheduled_at[rid] == UNSET:
            self.table.scheduled_at[rid] = now
        self.running.append(rid)

    def _preempt(self, rid: int) -> None:
        """Restart ``rid``: free its KV (which may cache what it computed, so before the
        restart resets its counts) and put it at the front of the waiting queue."""
        self.kv.free(rid)
        self.table.restart(rid)
        self.waiting.appendleft(rid)
        self.waiting_prompt_tokens += self.table.prefill[rid]
        self.stats.num_preemptions += 1

    def _schedule_running_decode(self, rid: int, pool: deque[int]) -> bool:
        """Vidur's admission of a running request: preempt from the back of ``pool`` until a
        block is free (at least one must be, even if ``rid`` needs none), else preempt ``rid``.
        Returns whether ``rid`` joins the batch."""
        kv = self.kv
        while not kv.grow(rid):
            if pool:
                self._preempt(pool.pop())
            else:
                self._preempt(rid)
                return False
        return True

    # ------------------------------------------------- grouped-decode protocol
    def _lazy_decodes_fit(self, decodes: list[int]) -> bool:
        """Whether ``decodes`` (the decodes of ``running``) can be batched lazily: all of the
        decode set, each getting its block without a preemption. If so, the iteration's block
        growth is allocated.

        Vidur checks for one free block before each decode; with ``g`` of them growing now,
        ``free - g >= 1`` guarantees every check passes.
        """
        decoding = self.decoding
        if not self.group_decodes or len(decodes) != decoding.size:
            return False
        growth = decoding.growth
        return self.kv.grow_group(growth.phase[decoding.tick & growth.mask])  # growth.at, inlined

    def _write_back_decodes(self) -> None:
        """Make ``table`` exact for every decoding request before an exact-path iteration."""
        decoding = self.decoding
        for rid in self.running:
            if rid in decoding:
                decoding.leave(rid)

    def _track_decodes(self) -> None:
        """Hand every decoding request of ``running`` back to the group after an exact iteration."""
        if not self.group_decodes:
            return
        prefill_done = self.table.prefill_done
        for rid in self.running:
            if prefill_done[rid]:
                self.decoding.join(rid)

    # --------------------------------------------------------------- batch end
    def on_batch_end(self, decodes: list[int], prefills: list[int], chunks: list[int], now: float) -> None:
        """Vidur's ``on_batch_end`` for the batch in flight ending at ``now``: advance its
        requests, free the finished ones, put the others back in ``running`` (batch order)."""
        lazy = self.batch_lazy
        if lazy:
            self._finish_lazy_decodes(decodes, now)
        else:
            self._finish_exact_decodes(decodes, now)
        for rid, q in zip(prefills, chunks):
            self.advance_prefill(rid, q, now, track=lazy)
        if not lazy:
            self._track_decodes()

    def _finish_lazy_decodes(self, decodes: list[int], now: float) -> None:
        if not decodes:
            return
        finished = self.advance_decodes(1, now)
        if finished:
            gone = set(finished)
            decodes = [rid for rid in decodes if rid not in gone]
        self.running.extend(decodes)

    def _finish_exact_decodes(self, decodes: list[int], now: float) -> None:
        table = self.table
        processed = table.processed
        total = table.total
        running = self.running
        for rid in decodes:
            p = processed[rid] + 1
            processed[rid] = p
            if p == total[rid]:
                self._complete(rid, now)
            else:
                running.append(rid)

    def advance_decodes(self, iterations: int, now: float) -> list[int]:
        """Run the decode set ``iterations`` iterations ending at ``now``; complete and return
        the requests that finished."""
        finished = self.decoding.advance(iterations)
        for rid in finished:
            self._complete(rid, now)
        return finished

    def advance_prefill(self, rid: int, tokens: int, now: float, track: bool = True) -> None:
        """Add ``tokens`` prompt tokens to a request that has finished an iteration at ``now``.
        When its prompt is done it emits its first token and, unless that completes it, joins
        the decode set (if ``track``). Batch order puts it after the decodes in ``running``."""
        table = self.table
        p = table.processed[rid] + tokens
        if p == table.prefill[rid]:
            table.prefill_done[rid] = True
            self.kv.prefill_done(rid)
            p += 1  # the prefill iteration emits the first output token
            if table.prefill_completed_at[rid] == UNSET:
                table.prefill_completed_at[rid] = now
                stats, arrived = self.stats, table.arrived_at[rid]
                stats.num_first_tokens += 1
                stats.first_token_time_sum += now
                stats.first_token_arrival_sum += arrived
                stats.first_token_arrival_sq_sum += arrived * arrived
                stats.first_token_wait_sq_sum += (now - arrived) * (now - arrived)
        table.processed[rid] = p
        if p == table.total[rid]:
            self._complete(rid, now)
            return
        self.running.append(rid)
        if track and table.prefill_done[rid]:
            self.decoding.join(rid)

    def _complete(self, rid: int, now: float) -> None:
        """Record ``rid``'s completion at ``now`` and free its KV."""
        self.table.completed_at[rid] = now
        stats = self.stats
        stats.num_completed += 1
        stats.completed_time_sum += now
        self.kv.free(rid)
