"""One replica of the cluster: its paged KV cache and its iteration-level batching scheduler.

The three schedulers are line-for-line ports of Vidur's ``_get_next_batch`` (queue orders,
victim choice and all), working on request ids held in a :class:`RequestTable` instead of
per-request objects. Two things keep it fast without changing any result:

* decoding requests live in a :class:`DecodeSet` that advances them all with one counter, so
  an iteration costs O(prefills + completions), not O(batch); when an iteration could need a
  preemption (too few free blocks) or exceeds the batch cap, the set is written back and the
  exact per-request path runs that iteration;
* :meth:`Replica.advance_to` runs every iteration that ends by a given time, and steady runs
  (the decode set plus at most one partial prefill, which Sarathi's first iteration may admit
  from the queue) go through a tight loop that performs exactly the arithmetic the general
  path would (same float additions in the same order). At a horizon (the next arrival) the
  loop suspends with its iteration in flight and later resumes where it stopped, so the
  public state is exact at every arrival without re-forming the batch.

``tests/test_simulator.py::test_fast_paths_change_no_result`` holds all of this to the
per-request path: every timestamp, every stat, and the state a router sees at each decision.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from math import inf

from vidur_env.decode_set import DecodeSet
from vidur_env.request_table import RequestTable, UNSET
from vidur_env.time_model import ExecutionTimeModel

BLOCK_SIZE = 16

SteadyRun = tuple["int | None", bool, bool]
"""(the one partial prefill in the steady batch or None, whether admission is held off only
by the token budget, whether that partial is the head of the queue, which the run's first
iteration admits)."""


@dataclass
class Suspended:
    """A decode-run loop stopped at a horizon with its next iteration in flight."""

    run: SteadyRun
    chunk: int
    """Prompt tokens of ``run``'s partial prefill in the iteration in flight (0 if none)."""
    decode_time: float
    same_until: int
    """The loop's cached decode-only iteration time and the tick until which it holds."""
    queue_changed: bool = False
    """A request was queued since: the run's premise is gone, so resuming only finishes the
    iteration in flight and hands the next formation back to :meth:`Replica.advance_to`."""


@dataclass(frozen=True)
class SchedulerLimits:
    """Knobs of a replica's batching scheduler and KV cache, with Vidur's defaults."""

    num_blocks: int
    max_batch_size: int
    """Request slots from the memory planner (used by Orca)."""
    batch_size_cap: int = 128
    chunk_size: int = 512
    """Sarathi's token budget per iteration."""
    max_tokens_in_batch: int = 4096
    """vLLM's limit on the tokens of one prefill batch."""
    vllm_batch_rule: str = "padded"
    """'padded': Vidur main, batch_len * longest prompt <= limit; 'sum': Vidur 0.0.26, sum of prompts."""
    max_tokens: int = 4096
    """Longest request; Orca reserves this many tokens of KV per request at admission."""
    watermark_fraction: float = 0.01


@dataclass
class ReplicaStats:
    """Running totals a replica keeps for the end-of-run metrics."""

    num_iterations: int = 0
    batch_size_sum: int = 0
    tokens_sum: int = 0
    prefill_tokens_sum: int = 0
    busy_time: float = 0.0
    block_time: float = 0.0
    """Integral of allocated KV blocks over busy time (block-seconds)."""
    peak_blocks: int = 0
    num_preemptions: int = 0
    num_completed: int = 0
    completed_time_sum: float = 0.0
    num_first_tokens: int = 0
    first_token_time_sum: float = 0.0
    """Requests that completed (emitted their first token) and the sum of those times: what
    the env's latency (TTFT) reward integrates, in O(1) per replica and step."""

    def record(self, iterations: int, requests: int, tokens: int, prefill_tokens: int,
               busy: float, block_time: float, blocks: int) -> None:
        """Add ``iterations`` iterations that held ``requests`` requests and ``tokens`` tokens
        in all, ran ``busy`` seconds with ``block_time`` block-seconds of KV, ending at
        ``blocks`` allocated blocks."""
        self.num_iterations += iterations
        self.batch_size_sum += requests
        self.tokens_sum += tokens
        self.prefill_tokens_sum += prefill_tokens
        self.busy_time += busy
        self.block_time += block_time
        if blocks > self.peak_blocks:
            self.peak_blocks = blocks


class Replica:
    """State and scheduling of one replica; subclasses choose the batch composition rule."""

    grows_kv: bool = True
    """Whether decodes allocate a new block at each block boundary (Orca reserves up front)."""
    fast_forward: bool = True
    """Use the tight decode-run loop; turning it off must not change any result."""
    group_decodes: bool = True
    """Advance decoding requests as a group; off runs Vidur's per-request path for every
    iteration (and disables the fast-forward). Turning it off must not change any result."""

    def __init__(
        self, replica_id: int, table: RequestTable, time_model: ExecutionTimeModel, limits: SchedulerLimits
    ) -> None:
        self.replica_id = replica_id
        self.table = table
        self.time_model = time_model
        self.limits = limits
        self.num_blocks = limits.num_blocks
        self.watermark_blocks = int(limits.watermark_fraction * limits.num_blocks)
        self.max_micro_batch_size = limits.batch_size_cap
        self.waiting: deque[int] = deque()
        """Vidur's ``_request_queue``: requests holding no KV, restarted ones at the front."""
        self.running: list[int] = []
        """Vidur's ``_preempted_requests``: requests holding KV, not in the batch in flight."""
        self.decoding = DecodeSet(table, self.grows_kv)
        """Requests of ``running`` (and of a lazy batch in flight) that are past their prefill."""
        self.allocated_blocks = 0
        self.num_allocated_requests = 0
        self.waiting_prompt_tokens = 0
        self.batch_decodes: list[int] = []
        self.batch_prefills: list[int] = []
        self.batch_chunks: list[int] = []
        """The batch in flight: decoding requests, then prefilling ones with their chunk sizes."""
        self.batch_lazy = False
        """Whether the batch in flight advances ``decoding`` as a whole (else exact path)."""
        self.batch_end = inf
        self.pending_at = inf
        """Time at which an idle replica has work to schedule (formation deferred to it)."""
        self.suspended: Suspended | None = None
        """Set while the batch in flight is a steady iteration the decode-run loop stopped at a
        horizon: ``running`` is that batch and the loop resumes from it (see :meth:`_fast_forward`)."""
        self.stats = ReplicaStats()

    # ----------------------------------------------------------------- public view
    @property
    def is_busy(self) -> bool:
        return self.batch_end != inf

    @property
    def batch(self) -> list[int]:
        """Ids of the requests in the batch in flight, in Vidur's batch order."""
        if self.suspended is not None:
            partial = self.suspended.run[0]
            return [rid for rid in self.running if rid != partial] + ([] if partial is None else [partial])
        return self.batch_decodes + self.batch_prefills

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_in_batch(self) -> int:
        if self.suspended is not None:
            return len(self.running)
        return len(self.batch_decodes) + len(self.batch_prefills)

    @property
    def kv_utilization(self) -> float:
        return self.allocated_blocks / self.num_blocks

    def processed_tokens(self, rid: int) -> int:
        """Tokens request ``rid`` has processed on this replica (``table.processed`` is stale
        for requests in the decode phase, which the replica advances as a group)."""
        if rid in self.decoding:
            return self.decoding.processed(rid)
        return self.table.processed[rid]

    # ------------------------------------------------------------ arrivals / time
    def add_request(self, rid: int, now: float) -> None:
        """Queue a routed request; an idle replica will form a batch once time moves past ``now``."""
        if self.suspended is not None:
            self.suspended.queue_changed = True
        self.waiting.append(rid)
        self.waiting_prompt_tokens += self.table.prefill[rid]
        if self.batch_end == inf and now < self.pending_at:
            self.pending_at = now

    def advance_to(self, horizon: float) -> None:
        """Run every iteration that ends at or before ``horizon``.

        A batch ending exactly at ``horizon`` is finished but the next one is not formed,
        so a request arriving at that same instant can still join it (Vidur orders a batch
        end before the arrival's scheduling event at equal times).
        """
        while True:
            if self.batch_end != inf:
                if self.batch_end > horizon:
                    return
                now = self.batch_end
                if self.suspended is not None:
                    now = self._fast_forward(now, horizon, self.suspended.run, self.suspended)
                    if self.batch_end != inf:
                        continue
                else:
                    self._finish_batch(now)
            else:
                if self.pending_at >= horizon:
                    return
                now = self.pending_at
            self.pending_at = inf
            if now < horizon and self.fast_forward and self.group_decodes:
                run = self._steady_run()
                if run is not None:
                    tick = self.decoding.tick
                    now = self._fast_forward(now, horizon, run)
                    if self.batch_end != inf:
                        continue
                    if self.decoding.tick != tick:  # the run ended (a completion, ...): look again
                        self.pending_at = now
                        continue
            if now >= horizon:
                self.pending_at = now
                return
            self._start_batch(now)

    # ---------------------------------------------------------------- KV memory
    def _free(self, rid: int) -> None:
        table = self.table
        self.allocated_blocks -= table.blocks[rid]
        table.blocks[rid] = 0
        self.num_allocated_requests -= 1

    def _complete(self, rid: int, now: float) -> None:
        """Record ``rid``'s completion at ``now`` and free its KV."""
        self.table.completed_at[rid] = now
        stats = self.stats
        stats.num_completed += 1
        stats.completed_time_sum += now
        self._free(rid)

    def _advance_decodes(self, iterations: int, now: float) -> list[int]:
        """Run the decode set ``iterations`` iterations ending at ``now``; complete and return
        the requests that finished."""
        finished = self.decoding.advance(iterations)
        for rid in finished:
            self._complete(rid, now)
        return finished

    def _allocate_new(self, rid: int, num_blocks: int) -> None:
        self.table.blocks[rid] = num_blocks
        self.allocated_blocks += num_blocks
        self.num_allocated_requests += 1

    def _can_admit(self, rid: int) -> bool:
        """Vidur's watermark rule for a request that holds no KV yet."""
        need = -(-self.table.prefill[rid] // BLOCK_SIZE)
        return self.num_blocks - self.allocated_blocks - need >= self.watermark_blocks

    def _grow(self, rid: int) -> None:
        """Give a running request one more block when it has filled its reservation."""
        table = self.table
        if table.processed[rid] > table.blocks[rid] * BLOCK_SIZE:
            table.blocks[rid] += 1
            self.allocated_blocks += 1

    def _preempt(self, rid: int) -> None:
        """Restart ``rid``: free its KV and put it at the front of the waiting queue."""
        self.table.restart(rid)
        self._free(rid)
        self.waiting.appendleft(rid)
        self.waiting_prompt_tokens += self.table.prefill[rid]
        self.stats.num_preemptions += 1

    def _pop_waiting(self) -> int:
        rid = self.waiting.popleft()
        self.waiting_prompt_tokens -= self.table.prefill[rid]
        return rid

    def _admit_waiting(self) -> int:
        """Take the head of the queue and allocate the blocks of its prompt (Sarathi, vLLM)."""
        rid = self._pop_waiting()
        self._allocate_new(rid, -(-self.table.prefill[rid] // BLOCK_SIZE))
        return rid

    def _admit_head(self, now: float) -> None:
        """Admit the head of the queue into the running list as a partial prefill starting at
        ``now`` (what Sarathi's batch formation does to it, in the same order)."""
        rid = self._admit_waiting()
        if self.table.scheduled_at[rid] == UNSET:
            self.table.scheduled_at[rid] = now
        self.running.append(rid)

    def _schedule_running_decode(self, rid: int, pool: deque[int]) -> bool:
        """Vidur's admission of a running request: preempt from the back of ``pool`` until a
        block is free (at least one must be, even if ``rid`` needs none), else preempt ``rid``.
        Returns whether ``rid`` joins the batch."""
        while self.num_blocks - self.allocated_blocks < 1:
            if pool:
                self._preempt(pool.pop())
            else:
                self._preempt(rid)
                return False
        self._grow(rid)
        return True

    # ---------------------------------------------------------------- iterations
    def _form_batch(self) -> tuple[list[int], list[int], list[int]]:
        """Choose the next batch: (decoding request ids, prefilling request ids, their chunks)."""
        raise NotImplementedError

    def _lazy_decodes_fit(self, decodes: list[int]) -> bool:
        """Whether every decode of the coming iteration can get its block without a preemption.

        Vidur checks for one free block before each decode; with ``g`` of them growing now,
        ``free - g >= 1`` guarantees every check passes. If so, the growth is applied.
        """
        if not self.group_decodes:
            return False
        growth = self.decoding.growth_at(self.decoding.tick)
        if self.grows_kv and self.num_blocks - self.allocated_blocks - growth < 1:
            return False
        if len(decodes) != self.decoding.size:
            return False
        self.allocated_blocks += growth
        return True

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

    def _steady_run(self) -> SteadyRun | None:
        """Whether the coming batches are the whole decode set (plus, for Sarathi, one partial
        prefill, possibly admitted by the first of them) with nothing else admitted, and if so
        which partial and whether admission is held off only by the token budget (``gated``).
        None when the general path must run.

        While that holds, nothing changes the batch until a request completes, the prefill
        finishes, memory runs short, or the horizon is reached: the fast path may take over.
        """
        raise NotImplementedError

    def _start_batch(self, now: float) -> None:
        decodes, prefills, chunks = self._form_batch()
        if not decodes and not prefills:
            return
        processed = self.table.processed
        scheduled_at = self.table.scheduled_at
        num_decodes = len(decodes)
        if self.batch_lazy:
            decode_kv = self.decoding.kv_sum() if decodes else 0
        else:
            decode_kv = sum(map(processed.__getitem__, decodes))
        prefill_chunks: list[int] = []
        prefill_kv: list[int] = []
        for rid, q in zip(prefills, chunks):
            if scheduled_at[rid] == UNSET:
                scheduled_at[rid] = now
            # Vidur's time predictor classifies by query length: a 1-token chunk is a decode.
            if q == 1:
                num_decodes += 1
                decode_kv += processed[rid]
            else:
                prefill_chunks.append(q)
                prefill_kv.append(processed[rid])
        duration = self.time_model.iteration_time(num_decodes, decode_kv, tuple(prefill_chunks), tuple(prefill_kv))
        self.batch_decodes = decodes
        self.batch_prefills = prefills
        self.batch_chunks = chunks
        self.batch_end = now + duration
        prefill_tokens = sum(chunks)
        self.stats.record(1, len(decodes) + len(prefills), len(decodes) + prefill_tokens, prefill_tokens,
                          duration, self.allocated_blocks * duration, self.allocated_blocks)

    def _finish_batch(self, now: float) -> None:
        if self.batch_lazy:
            self._finish_lazy_decodes(now)
        else:
            self._finish_exact_decodes(now)
        for rid, q in zip(self.batch_prefills, self.batch_chunks):
            self._advance_prefill(rid, q, now, track=self.batch_lazy)
        if not self.batch_lazy:
            self._track_decodes()
        self.batch_decodes = []
        self.batch_prefills = []
        self.batch_chunks = []
        self.batch_end = inf

    def _finish_lazy_decodes(self, now: float) -> None:
        decodes = self.batch_decodes
        if not decodes:
            return
        finished = self._advance_decodes(1, now)
        if finished:
            gone = set(finished)
            decodes = [rid for rid in decodes if rid not in gone]
        self.running.extend(decodes)

    def _finish_exact_decodes(self, now: float) -> None:
        table = self.table
        processed = table.processed
        total = table.total
        running = self.running
        for rid in self.batch_decodes:
            p = processed[rid] + 1
            processed[rid] = p
            if p == total[rid]:
                self._complete(rid, now)
            else:
                running.append(rid)

    def _fast_forward(self, now: float, horizon: float, run: SteadyRun, resumed: Suspended | None = None) -> float:
        """Run iterations of the steady batch (the decode set plus at most one partial
        prefill, which the first iteration may admit from the queue) in a tight loop.

        The run goes through segments with the same decode set and partial prefill. A
        segment ends after the iteration in which a request completes or the prefill finishes;
        with nothing queued the run carries on with the new decode set, else the general path
        forms the next batch. The run also stops before an iteration that could need a
        preemption or admit a request, and suspends with the first iteration that would end
        after ``horizon`` in flight. With ``resumed``, the iteration in flight when the loop
        last suspended has just ended at ``now`` and the loop picks up after it. Returns the
        time reached.
        """
        decoding = self.decoding
        phase = decoding.phase
        iteration_time = self.time_model.iteration_time
        decode_run_time = self.time_model.decode_run_time
        chunk_size = self.limits.chunk_size
        limit = self.num_blocks - 1 if self.grows_kv else inf  # a decode needs one free block
        partial, gated, admit = run
        if admit:
            self._admit_head(now)
            run = partial, gated, False
        t = now
        if resumed is None:
            self._decode_run_order()
            same_until = decoding.tick  # decode-only iterations before this tick reuse ``d``
            recorded = recorded_tokens = 0
        else:
            self.suspended = None
            self.batch_end = inf
            d, same_until = resumed.decode_time, resumed.same_until
            recorded, recorded_tokens = 1, resumed.chunk
        while True:  # one segment
            n = decoding.size
            tick = decoding.tick
            last = decoding.next_completion()
            offset_sum = decoding.offset_sum
            budget = chunk_size - n
            if partial is not None:
                prompt = self.table.prefill[partial]
                done = self.table.processed[partial]
            allocated = self.allocated_blocks
            block_time = busy = 0.0
            prompt_tokens = 0  # of the partial prefill in this segment
            going = True
            if recorded:
                # the iteration in flight at suspension (already in the stats) has ended at ``now``
                tick += 1
                going = not resumed.queue_changed
                if recorded_tokens:
                    done += recorded_tokens
                    prompt_tokens = recorded_tokens
                    going = going and done != prompt
            in_flight = False
            while going and tick < last and t < horizon:
                grow = phase[tick & 15]  # all zero without KV growth (Orca)
                if allocated + grow > limit:
                    break
                kv = offset_sum + n * tick
                if partial is None:
                    q = 0
                    if tick >= same_until:
                        d, span = decode_run_time(n, kv)
                        same_until = tick + span
                else:
                    q = prompt - done if prompt - done < budget else budget
                    if gated and q < budget:
                        break  # budget left over: the head of the queue could be admitted
                    # a one-token chunk is timed as a decode, as in the general path
                    d = iteration_time(n + 1, kv + done, (), ()) if q == 1 else iteration_time(n, kv, (q,), (done,))
                allocated += grow
                block_time += allocated * d
                busy += d
                end = t + d
                if end > horizon:
                    in_flight = True
                    break
                t = end
                tick += 1
                if q:
                    done += q
                    prompt_tokens += q
                    if done == prompt:
                        break
            k = tick - decoding.tick
            prefilled = partial is not None and done == prompt
            completed = k and tick == last
            self.allocated_blocks = allocated
            if completed or (k and partial is not None):
                self._apply_run(k, t, partial, prompt_tokens)
            else:
                decoding.tick = tick  # nothing completes: the set advances by its counter alone
            # one stats update for the segment: the iterations run (less the one recorded at
            # suspension) and the one now in flight, recorded when it starts as in the general path
            iterations = k - recorded + in_flight
            if iterations:
                tokens = prompt_tokens - recorded_tokens + (q if in_flight else 0)
                self.stats.record(iterations, (n + (partial is not None)) * iterations, n * iterations + tokens,
                                  tokens, busy, block_time, allocated)
            if in_flight:
                self.batch_lazy = True
                self.batch_end = t + d
                self.suspended = Suspended(run, q, d if partial is None else 0.0, same_until)
                return t
            if not (completed or prefilled) or self.waiting:
                return t
            # a request completed or finished its prefill, and nothing is queued: go on with
            # the new decode set (its first iteration recomputes the decode time)
            if prefilled:
                partial = None
            if partial is None and not decoding.size:
                return t
            run = partial, False, False
            gated = False
            recorded = recorded_tokens = 0
            same_until = decoding.tick

    def _apply_run(self, k: int, end: float, partial: int | None, prompt_tokens: int) -> None:
        """Advance the decode set ``k`` iterations and the partial prefill by ``prompt_tokens``,
        ending at ``end``, as the general path would (completions, batch order)."""
        running = self.running
        for rid in self._advance_decodes(k, end):
            running.remove(rid)
        if partial is not None:
            if running[-1] == partial:  # the usual place of the partial prefill
                running.pop()
            else:
                running.remove(partial)
            self._advance_prefill(partial, prompt_tokens, end)

    def _advance_prefill(self, rid: int, tokens: int, now: float, track: bool = True) -> None:
        """Add ``tokens`` prompt tokens to a request that has finished an iteration at ``now``.
        When its prompt is done it emits its first token and, unless that completes it, joins
        the decode set (if ``track``). Batch order puts it after the decodes in ``running``."""
        table = self.table
        p = table.processed[rid] + tokens
        if p == table.prefill[rid]:
            table.prefill_done[rid] = True
            p += 1  # the prefill iteration emits the first output token
            if table.prefill_completed_at[rid] == UNSET:
                table.prefill_completed_at[rid] = now
                self.stats.num_first_tokens += 1
                self.stats.first_token_time_sum += now
        table.processed[rid] = p
        if p == table.total[rid]:
            self._complete(rid, now)
            return
        self.running.append(rid)
        if track and table.prefill_done[rid]:
            self.decoding.join(rid)

    def _decode_run_order(self) -> list[int]:
        """The running list in the order the scheduler would batch it."""
        return self.running


class SarathiReplica(Replica):
    """Sarathi-Serve chunked prefill (Vidur's default): decodes first, then partial prefills,
    then new requests, within a token budget of ``chunk_size`` per iteration."""

    def _form_batch(self) -> tuple[list[int], list[int], list[int]]:
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
        cap = self.max_micro_batch_size
        while waiting:
            if self.num_allocated_requests == self.limits.batch_size_cap:
                break
            if len(decodes) + len(prefills) == cap:
                break
            rid = waiting[0]
            if not self._can_admit(rid):
                break
            q = min(table.prefill[rid] - processed[rid], budget)
            if q <= 0:
                break
            self._admit_waiting()
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

    def _steady_run(self) -> SteadyRun | None:
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
            or self.num_allocated_requests == self.limits.batch_size_cap
            or len(running) == self.max_micro_batch_size
            or not self._can_admit(waiting[0])
        ):
            return (partial, False, False) if running else None
        if partial is not None:
            return partial, True, False
        if len(running) >= self.limits.chunk_size:
            return None, False, False  # the decodes use the whole budget: the head gets no tokens
        return self._admission_run()

    def _admission_run(self) -> SteadyRun | None:
        """The run whose first iteration admits the head of the queue next to the decode set,
        or None when the general path must decide because the head's blocks do not fit beside
        this iteration's decode growth. (If a second request would join that iteration, the
        loop stops before running it, and the general path finds the head already admitted,
        exactly as its own formation would have left it.)"""
        table, waiting = self.table, self.waiting
        rid = waiting[0]
        need = -(-table.prefill[rid] // BLOCK_SIZE)
        free = self.num_blocks - self.allocated_blocks - self.decoding.growth_at(self.decoding.tick) - need
        if free < max(self.watermark_blocks, 1):
            return None
        gated = (
            len(waiting) > 1
            and self.num_allocated_requests + 1 < self.limits.batch_size_cap
            and len(self.running) + 1 < self.max_micro_batch_size
            and free - -(-table.prefill[waiting[1]] // BLOCK_SIZE) >= self.watermark_blocks
        )
        return rid, gated, True


class VLLMReplica(Replica):
    """vLLM: a prefill-only batch of whole prompts whenever one can be admitted, else a
    decode batch of every running request in arrival order."""

    def _prompt_batch_fits(self, prompts: list[int], q: int) -> bool:
        limit = self.limits.max_tokens_in_batch
        if self.limits.vllm_batch_rule == "sum":
            return sum(prompts) + q <= limit
        return (len(prompts) + 1) * max(max(prompts, default=0), q) <= limit

    def _form_batch(self) -> tuple[list[int], list[int], list[int]]:
        table = self.table
        prefills: list[int] = []
        chunks: list[int] = []
        waiting = self.waiting
        while waiting:
            rid = waiting[0]
            q = table.prefill[rid]
            if not self._can_admit(rid) or not self._prompt_batch_fits(chunks, q):
                break
            if self.num_allocated_requests == self.limits.batch_size_cap:
                break
            if len(prefills) == self.max_micro_batch_size:
                break
            self._admit_waiting()
            prefills.append(rid)
            chunks.append(q)
        self.batch_lazy = self.group_decodes  # a prompt batch leaves the decodes waiting
        if prefills:
            return [], prefills, chunks
        pool = self._decode_run_order()
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

    def _decode_run_order(self) -> list[int]:
        self.running.sort(key=self.table.arrived_at.__getitem__)
        return self.running

    def _steady_run(self) -> SteadyRun | None:
        running = self.running
        if not running or len(running) > self.max_micro_batch_size or self.decoding.size != len(running):
            return None
        if not self.waiting:
            return None, False, False
        rid = self.waiting[0]
        if (
            not self._can_admit(rid)
            or not self._prompt_batch_fits([], self.table.prefill[rid])
            or self.num_allocated_requests == self.limits.batch_size_cap
        ):
            return None, False, False
        return None


class OrcaReplica(Replica):
    """Orca: iteration-level batches mixing whole prefills and decodes; each admitted request
    reserves ``max_tokens`` of KV up front, so there is never a preemption."""

    grows_kv = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_micro_batch_size = self.limits.max_batch_size
        self.reserve_blocks = self.limits.max_tokens // BLOCK_SIZE

    def _form_batch(self) -> tuple[list[int], list[int], list[int]]:
        table = self.table
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
            if self.num_blocks - self.allocated_blocks < self.reserve_blocks:
                break
            rid = self._pop_waiting()
            self._allocate_new(rid, self.reserve_blocks)
            prefills.append(rid)
            chunks.append(table.prefill[rid])
        return decodes, prefills, chunks

    def _steady_run(self) -> SteadyRun | None:
        running = self.running
        if not running or len(running) > self.max_micro_batch_size or self.decoding.size != len(running):
            return None
        if self.waiting and len(running) < self.max_micro_batch_size:
            if self.num_blocks - self.allocated_blocks >= self.reserve_blocks:
                return None
        return None, False, False


SCHEDULERS: dict[str, type[Replica]] = {
    "sarathi": SarathiReplica,
    "vllm": VLLMReplica,
    "orca": OrcaReplica,
}
