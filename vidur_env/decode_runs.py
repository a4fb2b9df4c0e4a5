"""The decode-run loop: a replica's steady iterations in closed form, suspended at horizons.

Most iterations of a busy replica are *steady*: the whole decode set, plus at most one
partial prefill (which Sarathi's first iteration of the run may admit from the queue), with
nothing else admitted, until a request completes, the prefill finishes, memory runs short or
the next arrival (the horizon) comes. A scheduler says when that holds through its optional
:meth:`~vidur_env.schedulers.base.ReplicaScheduler.steady_run` hook; :class:`DecodeRuns` then
runs those iterations in a tight loop that performs exactly the arithmetic the general path
would (same float additions in the same order), reading the decode set's offsets and its KV
growth rhythm instead of touching each request.

At a horizon the loop suspends with its iteration in flight (:class:`Suspended`) and later
resumes where it stopped, so the public state of the replica is exact at every arrival
without re-forming the batch; :meth:`DecodeRuns.batch` is that batch as the general path
would show it.

For the cluster's quiet replicas (:mod:`vidur_env.cluster`) the module also says until when a
suspended run leaves the load counts alone (:meth:`DecodeRuns.quiet_until`) and replays a
run (its decode iterations, or a partial prefill's chunks beside them) through the arrivals a
quiet replica skipped (:meth:`DecodeRuns.replay`).

``tests/test_simulator.py::test_fast_paths_change_no_result`` holds this module to Vidur's
per-request path: every timestamp, every stat, and the state a router sees at each decision.
"""
from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

from vidur_env.kv_cache import BLOCK_SIZE
from vidur_env.schedulers.base import ReplicaScheduler, SteadyRun
from vidur_env.time_model import ExecutionTimeModel


@dataclass
class Suspended:
    """A decode-run loop stopped at a horizon with its next iteration in flight."""

    run: SteadyRun
    end: float
    """When the iteration in flight ends."""
    chunk: int
    """Prompt tokens of ``run``'s partial prefill in the iteration in flight (0 if none)."""
    decode_time: float
    same_until: int
    """The loop's cached decode-only iteration time and the tick until which it holds."""
    completion: float
    """The decode set's next completion tick (the set does not change while suspended)."""
    queue_changed: bool = False
    """A request was queued since: the run's premise is gone, so resuming only finishes the
    iteration in flight and hands the next formation back to the scheduler."""


class DecodeRuns:
    """The decode-run loop of one replica, and the batch it left in flight, if any.

    While ``suspended`` is set, the scheduler's ``running`` list is the batch in flight (the
    decode set and the partial prefill, so its length is the batch size), and the loop
    resumes from it.
    """

    def __init__(self, scheduler: ReplicaScheduler, time_model: ExecutionTimeModel) -> None:
        self.scheduler = scheduler
        self.suspended: Suspended | None = None
        decoding, kv = scheduler.decoding, scheduler.kv
        self._loop_constants = (
            scheduler, decoding, kv, scheduler.table, scheduler.stats, decoding.growth.phase, decoding.growth.mask,
            time_model.iteration_time, time_model.decode_run_time, scheduler.limits.chunk_size, kv.growth_ceiling,
        )
        """What the loop reads on every call, unpacked in one step (the objects never change)."""

    # ----------------------------------------------------------- public view
    def batch(self) -> list[int]:
        """Ids of the suspended batch in Vidur's batch order (decodes, then the prefill)."""
        partial = self.suspended.run[0]
        running = self.scheduler.running
        return [rid for rid in running if rid != partial] + ([] if partial is None else [partial])

    def quiet_until(self) -> float | None:
        """Until when the suspended run keeps the replica's load counts (queue, queued prompt
        tokens, requests holding KV) as they are, with nothing queued: its iterations go on
        (a partial prefill's chunks, then, once its prompt is done, the decode set with it as
        :meth:`run` goes on) until one completes a request or the block limit (or a token
        budget left over) stops the loop before an iteration. Returns a time at or before that:
        the very end of the last chunk if it comes first, else a bound on the decode
        iterations' times summed a span at a time (the limit is kept out of reach by counting
        a block per member every ``BLOCK_SIZE`` ticks). None while requests are queued."""
        suspended = self.suspended
        (scheduler, decoding, kv_cache, table, _, phase, mask, iteration_time, decode_run_time, chunk_size,
         limit) = self._loop_constants
        if suspended.queue_changed or scheduler.waiting:
            return None
        t = suspended.end
        tick = decoding.tick + 1  # once the iteration in flight has ended
        last = suspended.completion
        n, offset_sum = decoding.size, decoding.offset_sum
        allocated = kv_cache.allocated_blocks
        d, same_until = suspended.decode_time, suspended.same_until
        joined = -1  # the growth phase of a request that joined the decode set here (-1: none)
        partial, gated, _ = suspended.run
        if partial is not None:
            prompt, done, budget = table.prefill[partial], table.processed[partial] + suspended.chunk, chunk_size - n
            while done != prompt:
                grow = phase[tick & mask]
                q = prompt - done if prompt - done < budget else budget
                if tick >= last or allocated + grow > limit or gated and q < budget:
                    return t
                kv_tokens = offset_sum + n * tick
                d = iteration_time(n, kv_tokens, (q,), (done,))
                allocated += grow
                t = t + d
                tick += 1
                done += q
            # the prompt is done at ``tick``: the request emits its first token and joins the
            # decode set (ReplicaScheduler.advance_prefill, DecodeSet.join), unless that
            # completes it or a member completes too, or prefix caching registers blocks
            total = table.total[partial]
            if tick >= last or total == prompt + 1 or kv_cache.prefix_caching:
                return t
            offset = prompt + 1 - tick
            n, offset_sum, last = n + 1, offset_sum + offset, min(last, total - offset)
            if decoding.growth.grows:
                joined = (table.blocks[partial] * BLOCK_SIZE + 1 - offset) & mask
            same_until = tick
        # decode iterations: summed a span of equal times at a time, while the block limit is
        # out of reach (each member takes a block every BLOCK_SIZE ticks)
        growing = sum(phase) + (joined >= 0)
        start = t
        while tick < last:
            if tick >= same_until:
                d, span = decode_run_time(n, offset_sum + n * tick)
                same_until = tick + span
            ticks = min(last, same_until) - tick
            allocated += growing * -(-ticks // BLOCK_SIZE)
            if allocated > limit:
                break  # the limit may stop the loop in this span: wake at its start
            t += ticks * d
            tick += ticks
        # the loop adds one time per iteration, rounding each sum: its time can be below
        # this estimate, never by a billionth of it (waking a replica early costs a look)
        return t if t == start else t * (1 - 1e-9)

    def replay(self, horizons: Sequence[float], start: int, end: int) -> int:
        """Take a suspended run through the horizons ``horizons[start:end]`` (arrivals of
        requests routed elsewhere, non-decreasing) as :meth:`resume_decode` or :meth:`run`
        would at each one at or after its iteration in flight ends: the same iterations and,
        per horizon, the same record (that horizon's iterations, summed from 0.0 in order), in
        one loop over horizons that reads the run's state once. Stops at the first horizon
        where more than the decode set's iterations (and a partial prefill's chunks) would
        happen (a completion, the block limit, an iteration ending at the horizon's very
        instant; see :meth:`_replay_prefill`) and returns its index, or ``end``; the loop then
        takes that horizon as usual."""
        suspended = self.suspended
        if suspended.queue_changed:
            return start
        if suspended.run[0] is not None:
            return self._replay_prefill(horizons, start, end)
        _, decoding, kv_cache, _, stats, phase, mask, _, decode_run_time, _, limit = self._loop_constants
        n, offset_sum, last = decoding.size, decoding.offset_sum, suspended.completion
        tick, allocated = decoding.tick, kv_cache.allocated_blocks
        t, d, same_until = suspended.end, suspended.decode_time, suspended.same_until
        while True:
            start = bisect_left(horizons, t, start, end)
            if start == end:
                break
            horizon = horizons[start]
            # the iteration in flight has ended at ``now``: run those that end by the horizon
            # and start the next, as the loop would
            now, k, grown, d_k, until_k = t, tick + 1, allocated, d, same_until
            busy = block_time = 0.0
            in_flight = False
            while now < horizon and k < last:
                grow = phase[k & mask]
                if grown + grow > limit:
                    break
                if k >= until_k:
                    d_k, span = decode_run_time(n, offset_sum + n * k)
                    until_k = k + span
                grown += grow
                block_time += grown * d_k
                busy += d_k
                if now + d_k > horizon:
                    in_flight = True
                    break
                now += d_k
                k += 1
            if not in_flight:
                break  # not plain decode iterations: the loop's general path takes this horizon
            iterations = k - tick
            stats.record(iterations, n * iterations, n * iterations, 0, busy, block_time, grown)
            tick, allocated, t, d, same_until = k, grown, now + d_k, d_k, until_k
            start += 1
        decoding.tick = tick
        kv_cache.allocated_blocks = allocated
        suspended.end, suspended.decode_time, suspended.same_until = t, d, same_until
        return start

    def _replay_prefill(self, horizons: Sequence[float], start: int, end: int) -> int:
        """:meth:`replay` of a run with a partial prefill: its chunks, each beside the decode
        set, through the horizons, as :meth:`run` resumed at each would take them (a quiet
        replica spends most of a prompt's chunks so in a large fleet). Also stops at the
        horizon by which the prompt is done (the request then joins the decode set, which
        only :meth:`run` does) and where the gate would stop an iteration (budget left over
        for the head of the queue)."""
        suspended = self.suspended
        (scheduler, decoding, kv_cache, table, stats, phase, mask, iteration_time, _, chunk_size,
         limit) = self._loop_constants
        partial, gated, _ = suspended.run
        n, offset_sum, last = decoding.size, decoding.offset_sum, suspended.completion
        prompt, budget = table.prefill[partial], chunk_size - n
        tick, allocated, t, chunk = decoding.tick, kv_cache.allocated_blocks, suspended.end, suspended.chunk
        done = table.processed[partial]  # the prompt tokens of the iterations before the one in flight
        while True:
            start = bisect_left(horizons, t, start, end)
            if start == end:
                break
            horizon = horizons[start]
            # the iteration in flight has ended at ``now`` with its chunk: run those that end
            # by the horizon and start the next, as the loop would
            now, k, grown, done_k = t, tick + 1, allocated, done + chunk
            busy = block_time = 0.0
            tokens = 0  # prompt tokens of the iterations started here
            in_flight = False
            while now < horizon and k < last and done_k != prompt:
                grow = phase[k & mask]
                q = prompt - done_k if prompt - done_k < budget else budget
                if grown + grow > limit or gated and q < budget:
                    break
                d = iteration_time(n, offset_sum + n * k, (q,), (done_k,))
                grown += grow
                block_time += grown * d
                busy += d
                tokens += q
                if now + d > horizon:
                    in_flight = True
                    break
                now += d
                k += 1
                done_k += q
            if not in_flight:
                break  # more than chunks beside the decode set: the loop's general path takes this horizon
            iterations = k - tick
            stats.record(iterations, (n + 1) * iterations, n * iterations + tokens, tokens, busy, block_time, grown)
            tick, allocated, t, done, chunk = k, grown, now + d, done_k, q
            start += 1
        if tick != decoding.tick:  # a horizon was taken
            decoding.tick = tick
            kv_cache.allocated_blocks = allocated
            table.processed[partial] = done
            running = scheduler.running
            if running[-1] != partial:  # batch order, as the loop's ``_apply`` leaves it
                running.remove(partial)
                running.append(partial)
            suspended.end, suspended.chunk = t, chunk
        return start

    # ------------------------------------------------------------------ loop
    def resume_decode(self, now: float, horizon: float) -> bool:
        """Resume the suspended run in the commonest case in a large fleet, where the horizons
        are so close that every iteration is its own step: the iteration in flight (decodes
        only) has ended at ``now`` and the next one, the same batch with the same time, ends
        after ``horizon``. Then this starts that iteration and stays suspended, with the very
        updates :meth:`run` would make (its segment holds that one iteration, so its sums are
        ``0.0 + x``, i.e. ``x``), without :meth:`run`'s setup. Returns False, having changed
        nothing, in any other case."""
        suspended = self.suspended
        if suspended.queue_changed or suspended.run[0] is not None or now >= horizon:
            return False
        scheduler, decoding, kv_cache, _, stats, phase, mask, _, _, _, limit = self._loop_constants
        tick = decoding.tick + 1
        if tick >= suspended.same_until or tick >= suspended.completion:
            return False
        allocated = kv_cache.allocated_blocks + phase[tick & mask]
        d = suspended.decode_time
        end = now + d
        if allocated > limit or end <= horizon:
            return False
        decoding.tick = tick
        kv_cache.allocated_blocks = allocated
        n = decoding.size
        stats.record(1, n, n, 0, d, allocated * d, allocated)
        scheduler.batch_lazy = True
        suspended.end = end
        return True

    def run(self, now: float, horizon: float, run: SteadyRun | None = None) -> float:
        """Run iterations of the steady batch ``run`` from ``now`` in a tight loop; with
        ``run`` None, resume the suspended run, whose iteration in flight has ended at ``now``.

        The run goes through segments with the same decode set and partial prefill. A
        segment ends after the iteration in which a request completes or the prefill finishes;
        with nothing queued the run carries on with the new decode set, else the scheduler
        forms the next batch. The run also stops before an iteration that could need a
        preemption or admit a request, and suspends (``suspended`` set) with the first
        iteration that would end after ``horizon`` in flight. Returns the time reached.
        """
        (scheduler, decoding, kv_cache, table, stats, phase, mask, iteration_time, decode_run_time, chunk_size,
         limit) = self._loop_constants  # limit: allocated blocks a grouped iteration may reach
        resumed = None
        if run is None:
            resumed, self.suspended = self.suspended, None
            run = resumed.run
        partial, gated, admit = run
        if admit:
            scheduler.admit_head(now, phase[decoding.tick & mask])  # this iteration's decode growth
            run = partial, gated, False
        t = now
        if resumed is None:
            scheduler.decode_run_order()
            same_until = decoding.tick  # decode-only iterations before this tick reuse ``d``
            recorded = recorded_tokens = 0
        else:
            d, same_until = resumed.decode_time, resumed.same_until
            recorded, recorded_tokens = 1, resumed.chunk
        while True:  # one segment
            n = decoding.size
            tick = decoding.tick
            last = decoding.next_completion()
            offset_sum = decoding.offset_sum
            budget = chunk_size - n
            if partial is not None:
                prompt = table.prefill[partial]
                done = table.processed[partial]
            allocated = kv_cache.allocated_blocks
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
                grow = phase[tick & mask]  # all zero without KV growth (Orca)
                if allocated + grow > limit:
                    break
                kv_tokens = offset_sum + n * tick
                if partial is None:
                    q = 0
                    if tick >= same_until:
                        d, span = decode_run_time(n, kv_tokens)
                        same_until = tick + span
                else:
                    q = prompt - done if prompt - done < budget else budget
                    if gated and q < budget:
                        break  # budget left over: the head of the queue could be admitted
                    d = iteration_time(n, kv_tokens, (q,), (done,))
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
            kv_cache.allocated_blocks = allocated
            if completed or (k and partial is not None):
                self._apply(k, t, partial, prompt_tokens)
            else:
                decoding.tick = tick  # nothing completes: the set advances by its counter alone
            # one stats update for the segment: the iterations run (less the one recorded at
            # suspension) and the one now in flight, recorded when it starts as in the general path
            iterations = k - recorded + in_flight
            if iterations:
                tokens = prompt_tokens - recorded_tokens + (q if in_flight else 0)
                stats.record(iterations, (n + (partial is not None)) * iterations, n * iterations + tokens,
                             tokens, busy, block_time, allocated)
            if in_flight:
                scheduler.batch_lazy = True
                self.suspended = Suspended(run, t + d, q, d if partial is None else 0.0, same_until, last)
                return t
            if not (completed or prefilled) or scheduler.waiting:
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

    def _apply(self, k: int, end: float, partial: int | None, prompt_tokens: int) -> None:
        """Advance the decode set ``k`` iterations and the partial prefill by ``prompt_tokens``,
        ending at ``end``, as the general path would (completions, batch order)."""
        scheduler = self.scheduler
        running = scheduler.running
        for rid in scheduler.advance_decodes(k, end):
            running.remove(rid)
        if partial is not None:
            if running[-1] == partial:  # the usual place of the partial prefill
                running.pop()
            else:
                running.remove(partial)
            scheduler.advance_prefill(partial, prompt_tokens, end)
