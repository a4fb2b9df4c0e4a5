"""The paged KV cache of one replica: every block count in the simulator is decided here.

Vidur's replica schedulers keep an allocation map (request -> blocks held) and a count of
allocated blocks; a request's KV grows in blocks of ``BLOCK_SIZE`` tokens. This module owns
that arithmetic: the block size, the blocks a request takes at admission (the one
ceil-division), capacity and watermark, the admission checks, allocate / grow / free, and
what a replica can admit at all. Schedulers, the decode set, the decode-run loop and the
env's action masks ask a :class:`KVCache`; none of them divides by the block size.

Two policies, as in Vidur:

* :class:`KVCache` (Sarathi, vLLM): a new request gets the blocks of its prompt, admitted
  only while the watermark stays free; a running request takes one more block each time its
  processed tokens pass a block boundary.
* :class:`ReservingKVCache` (Orca): a new request reserves the blocks of ``max_tokens`` up
  front and never grows.

Requests decoding in lockstep take their new blocks on a fixed rhythm (one every
``BLOCK_SIZE`` iterations, at a phase set by their offset): :class:`GroupGrowth` counts them
per phase, so a grouped decode iteration learns its growth in O(1).

Prefix caching (vLLM's automatic prefix caching, per replica, opt-in): :class:`PrefixKVCache`,
chosen at construction so the caching-off path does no cache work at all. Callers name
requests, never blocks; the per-request column holds the blocks a request *references*, and
``allocated_blocks`` counts distinct referenced blocks. Decode growth is always a private
block past the prompt, so :class:`GroupGrowth` holds as it is.
"""
from __future__ import annotations

from itertools import repeat, takewhile
from math import inf
from typing import Sequence

from vidur_env.request_table import BlockHashes, RequestTable
from vidur_env.stamp_log import drop_oldest, live_keys, stamp

BLOCK_SIZE = 16
"""Tokens per KV block (Vidur's ``block_size``)."""
_PHASE_MASK = BLOCK_SIZE - 1
assert BLOCK_SIZE & _PHASE_MASK == 0, "the grouped-growth phase is a bit mask: BLOCK_SIZE must be a power of two"


def max_hit_blocks(prompt: int) -> int:
    """The most blocks of a ``prompt``-token prompt a cache hit may cover: all but what holds
    its last token, which is always computed (vLLM's rule)."""
    return max(prompt - 1, 0) // BLOCK_SIZE


def reachable_hit_tokens(prompts: Sequence[int], block_hashes: Sequence[BlockHashes]) -> list[int]:
    """Per request, in arrival order, the most prompt tokens any replica's prefix cache could
    hand it at admission: the longest run of its leading blocks that some earlier request
    computed (every block its keys name, prompt and output), capped as
    :class:`PrefixKVCache` caps a hit. Eviction and whether that request has finished are
    ignored, so no routing does better: the bound the ``lower_bound`` row serves from."""
    seen: set[int] = set()
    hits = []
    for prompt, hashes in zip(prompts, block_hashes):
        if hashes is None:
            hits.append(0)
            continue
        hittable = hashes[: max_hit_blocks(int(prompt))]
        hits.append(len(list(takewhile(seen.__contains__, hittable))) * BLOCK_SIZE)
        seen.update(hashes)
    return hits


class KVCache:
    """Vidur's block manager of one replica for schedulers whose decodes grow their KV.

    :param table: the requests; the cache reads their current prompt and processed counts
        and keeps the blocks each holds in ``table.blocks`` (0: not in the allocation map).
        Requests in a :class:`GroupGrowth` lag there: their growth is counted in
        ``allocated_blocks`` at once and written to the column when they leave the group.
    :param num_blocks: capacity in blocks.
    :param watermark_fraction: share of the blocks a new request's admission must leave free.
    """

    grows = True
    """Whether running requests take a block at each block boundary (else they reserve up front)."""
    prefix_caching = False
    """Whether full blocks are shared between requests by content (:class:`PrefixKVCache`)."""
    cached_blocks = 0
    """Blocks holding cached content, referenced or not (none without prefix caching)."""
    evictions = 0
    hit_tokens = 0
    """Cached blocks evicted, and prompt tokens served from the cache, over the run."""

    def __init__(self, table: RequestTable, num_blocks: int, watermark_fraction: float) -> None:
        self.blocks = table.blocks
        self.prompt = table.prefill
        self.processed = table.processed
        self.num_blocks = num_blocks
        self.watermark_blocks = int(watermark_fraction * num_blocks)
        self.allocated_blocks = 0
        self.num_allocated_requests = 0
        """Requests in the allocation map (holding KV)."""
        self.growth_ceiling: float = num_blocks - 1
        """Most allocated blocks after a grouped iteration's growth such that Vidur's check
        before each decode (one free block) passes for every decode of the iteration."""

    @property
    def utilization(self) -> float:
        return self.allocated_blocks / self.num_blocks

    # -------------------------------------------------------------- admission
    def admission_blocks(self, rid: int) -> int:
        """Blocks request ``rid`` (holding none) takes when admitted: those holding its prompt,
        Vidur's ``ceil(num_prefill_tokens / block_size)``."""
        return -(-self.prompt[rid] // BLOCK_SIZE)

    def free_after(self, rid: int, reserved: int = 0) -> int:
        """Free blocks once request ``rid`` is admitted and ``reserved`` more blocks are
        allocated (negative when they do not fit)."""
        return self.num_blocks - self.allocated_blocks - reserved - self.admission_blocks(rid)

    def can_admit(self, rid: int, reserved: int = 0) -> bool:
        """Vidur's ``_can_allocate_request`` for a new request: its blocks fit and the
        watermark stays free (with ``reserved`` blocks already promised elsewhere)."""
        # free_after's sum written out: this runs before every formation and steady run
        return self.num_blocks - self.allocated_blocks - reserved - self.admission_blocks(rid) >= self.watermark_blocks

    def max_admissible_prompt(self) -> float:
        """Longest prompt (tokens) this cache admits when empty; a longer one never runs."""
        return (self.num_blocks - self.watermark_blocks) * BLOCK_SIZE

    # ------------------------------------------------------------- allocation
    def allocate(self, rid: int, pending: int = 0) -> None:
        """Vidur's ``_allocate_request`` for a new request: its admission blocks. ``pending``:
        decode growth the caller allocates right after, for the same iteration (the decode-run
        loop admits before it counts its first iteration's growth; a batch formation counts it
        first, which matters only to a prefix cache's eviction)."""
        num_blocks = self.admission_blocks(rid)
        self.blocks[rid] = num_blocks
        self.allocated_blocks += num_blocks
        self.num_allocated_requests += 1

    def grow(self, rid: int) -> bool:
        """Vidur's ``_can_allocate_request`` then ``_allocate_request`` for a running request
        (its processed count exact in the table): unless no block is free (asked before every
        decode, whether or not it needs a block; then nothing is allocated and the answer is
        False), one more block when its processed tokens overflow its blocks."""
        if self.allocated_blocks >= self.num_blocks:
            return False
        if self.processed[rid] > self.blocks[rid] * BLOCK_SIZE:
            self.blocks[rid] += 1
            self.allocated_blocks += 1
        return True

    def grow_group(self, growth: int) -> bool:
        """Allocate the blocks of a grouped decode iteration where ``growth`` decodes take a
        new one (settled per request by :meth:`GroupGrowth.leave`), if every one of Vidur's
        per-decode checks passes (``free - growth >= 1``); else allocate nothing, return False."""
        if self.allocated_blocks + growth > self.growth_ceiling:
            return False
        self.allocated_blocks += growth
        return True

    def free(self, rid: int) -> None:
        """Release every block of ``rid`` and drop it from the allocation map."""
        self.allocated_blocks -= self.blocks[rid]
        self.blocks[rid] = 0
        self.num_allocated_requests -= 1

    def match_blocks(self, hashes: tuple[int, ...]) -> int:
        """Leading blocks of ``hashes`` cached here now (none without prefix caching)."""
        return 0

    def prefill_done(self, rid: int) -> None:
        """Request ``rid`` has computed its whole prompt (a hook for prefix caching)."""

    def group_growth(self) -> "GroupGrowth":
        """The growth bookkeeping of a group of requests decoding in lockstep here."""
        return GroupGrowth(self.blocks, self.grows)


class PrefixKVCache(KVCache):
    """:class:`KVCache` with vLLM's automatic prefix caching.

    A full block is identified by the request's ``block_hashes`` entry for it (a hash chained
    over the block's tokens and its parent's); only full blocks are cached. At admission a
    request references the longest prefix of its hashes cached here (reference count + 1),
    capped at :func:`max_hit_blocks` (``(prompt - 1) // BLOCK_SIZE``) so at least the last
    prompt token is computed, and starts with those tokens processed; the rest of its prompt
    takes fresh blocks.

    Its computed blocks are registered under their hashes when its prefill completes (prompt
    blocks) and when it completes or is preempted (output blocks its hashes cover); a block
    whose content is already cached elsewhere stays private. vLLM registers blocks as chunks
    fill; registering at the prefill's end keeps the cache unchanged inside a steady run of the
    decode-run loop, so a concurrent request sharing a prefix hits it one prefill later.

    A block whose reference count drops to zero stays cached and counts as free; blocks are
    evicted least-recently-released first when fresh blocks are needed, and a request releases
    its blocks tail first (vLLM frees in reverse order). Eviction is settled lazily, before any
    read or change of the cache's content, in the order eager eviction would have taken: decode
    growth (also the decode-run loop's, which writes ``allocated_blocks`` directly) only adds
    referenced blocks, so evicting the oldest unreferenced blocks until everything fits is the
    same as evicting one per grown block. ``allocated_blocks`` (distinct referenced blocks)
    plus the unreferenced cached blocks never exceed ``num_blocks`` when observed.

    A new request's admission takes its prompt's blocks less those it hits that are already
    referenced (a hit on an unreferenced block takes that block out of the free pool), as
    vLLM's ``allocate_slots`` counts them.
    """

    prefix_caching = True

    def __init__(self, table: RequestTable, num_blocks: int, watermark_fraction: float) -> None:
        super().__init__(table, num_blocks, watermark_fraction)
        self.table = table
        self.states: dict[int, int] = {}
        """Hash -> the cached block's state: the requests referencing it (positive), or, when
        none does, its release stamp (negative, decreasing with time): one dict, so a lookup is
        one probe, and an unreferenced block's stamp orders eviction (:mod:`vidur_env.stamp_log`)."""
        self.num_evictable = 0
        """Cached blocks no request references (they count as free)."""
        self._clock = -1
        """The next release stamp."""
        self._log_runs: list[list[int]] = []
        self._log_stamps: list[int] = []
        self._log_front = self._log_offset = 0
        """Releases in stamp order (the eviction order; stale keys skipped), read from this run
        on, its first keys already read."""
        self.refs: dict[int, list[int | None]] = {}
        """Per allocated request, its blocks in order from the first: the hash of a cached block
        it references, or None for a private one (computed, but its content was cached elsewhere);
        blocks past the list are private too."""
        self._version = 0
        """Bumped whenever a block becomes cached, referenced, unreferenced or evicted."""
        self._memo: tuple[int, int, list[int], int] = (-1, -1, [], 0)
        """(rid, version, states of the hit blocks, referenced hits) of the last lookup: the
        head of a queue is asked at every batch formation."""

    @property
    def ref_counts(self) -> dict[int, int]:
        """Hash -> requests referencing the cached block, for the referenced blocks."""
        return {h: state for h, state in self.states.items() if state > 0}

    @property
    def evictable(self) -> list[int]:
        """Unreferenced cached blocks by hash, least recently released first (the eviction order)."""
        return live_keys(self.states, self._log_runs, self._log_stamps, self._log_front, self._log_offset)

    @property
    def cached_blocks(self) -> int:  # type: ignore[override]
        self._evict()
        return len(self.states)

    def _evict(self) -> None:
        """Evict least-recently-released blocks until referenced plus cached blocks fit."""
        excess = self.allocated_blocks + self.num_evictable - self.num_blocks
        if excess <= 0:
            return
        self._log_front, self._log_offset = drop_oldest(self.states, self._log_runs, self._log_stamps,
                                                        self._log_front, self._log_offset, excess)
        self.num_evictable -= excess
        self.evictions += excess
        self._version += 1

    def _release(self, hashes: list[int]) -> None:
        """No request references ``hashes`` any more: they join the eviction order, in this order."""
        stamp(self.states, self._log_runs, self._log_stamps, hashes, self._clock)
        self._clock -= 1
        self.num_evictable += len(hashes)

    def match_blocks(self, hashes: tuple[int, ...]) -> int:
        self._evict()
        return len(list(takewhile(self.states.__contains__, hashes)))  # in C: every routing decision asks

    def _hits(self, rid: int) -> tuple[int, int]:
        """Blocks ``rid`` (holding none) would hit at admission, and how many of them are
        referenced now (the others come out of the free pool)."""
        hit_states, referenced = self._lookup(rid)
        return len(hit_states), referenced

    def _lookup(self, rid: int) -> tuple[list[int], int]:
        """The states of the blocks ``rid`` (holding none) would hit at admission and how many
        are referenced: read once per cache version (a miss ends the hits) and kept for the
        admission, which updates them."""
        self._evict()
        memo = self._memo
        if memo[0] == rid and memo[1] == self._version:
            return memo[2], memo[3]
        hashes = self.table.block_hashes[rid]
        hit_states: list[int] = []
        if hashes is not None:
            get, append = self.states.get, hit_states.append
            for h in hashes[: max_hit_blocks(self.prompt[rid])]:
                state = get(h)
                if state is None:
                    break
                append(state)
        referenced = len(hit_states) - [state > 0 for state in hit_states].count(False)
        self._memo = (rid, self._version, hit_states, referenced)
        return hit_states, referenced

    def hit_tokens_at_admission(self, rid: int) -> int:
        """Prompt tokens ``rid`` (holding none) would take from the cache if admitted now."""
        return self._hits(rid)[0] * BLOCK_SIZE

    def admission_blocks(self, rid: int) -> int:
        """The prompt's blocks less the hits already referenced by other requests."""
        return -(-self.prompt[rid] // BLOCK_SIZE) - self._hits(rid)[1]

    def allocate(self, rid: int, pending: int = 0) -> None:
        """Reference the hit blocks, take fresh ones for the rest of the prompt (evicting if
        needed, with the ``pending`` growth counted as allocated already, as a formation has it)
        and mark the hit tokens processed."""
        self.allocated_blocks += pending
        hit_states, referenced = self._lookup(rid)
        hits = len(hit_states)
        refs: list[int | None] = []
        if hits:
            refs = list(self.table.block_hashes[rid][:hits])
            # a count goes up by one, a release stamp (negative) becomes 1
            self.states.update(zip(refs, [state + 1 if state > 0 else 1 for state in hit_states]))
            self.num_evictable -= hits - referenced
            self._version += 1
            self.processed[rid] = hits * BLOCK_SIZE
            self.table.cached_tokens[rid] += hits * BLOCK_SIZE
            self.hit_tokens += hits * BLOCK_SIZE
        self.refs[rid] = refs
        num_blocks = -(-self.prompt[rid] // BLOCK_SIZE)
        self.blocks[rid] = num_blocks
        self.allocated_blocks += num_blocks - referenced
        self.num_allocated_requests += 1
        self._evict()
        self.allocated_blocks -= pending

    def prefill_done(self, rid: int) -> None:
        """Register the prompt's full blocks."""
        self._register(rid, self.prompt[rid])

    def _register(self, rid: int, kv_tokens: int) -> None:
        """Cache the full blocks among the first ``kv_tokens`` tokens of ``rid`` that its hashes
        name and that are not registered yet (unless their content is cached elsewhere)."""
        hashes = self.table.block_hashes[rid]
        if hashes is None:
            return
        refs = self.refs[rid]
        end = min(len(hashes), kv_tokens // BLOCK_SIZE, self.blocks[rid])
        if end <= len(refs):
            return
        states = self.states
        new = hashes[len(refs):end]
        if states.keys().isdisjoint(new):  # the usual case
            states.update(zip(new, repeat(1)))
            refs.extend(new)
        else:
            for h in new:
                if h in states:
                    refs.append(None)
                else:
                    states[h] = 1
                    refs.append(h)
        self._version += 1

    def free(self, rid: int) -> None:
        """Register what ``rid`` computed, then release its references, tail first: blocks no
        longer referenced join the eviction order, private ones return to the pool."""
        self._evict()
        self._register(rid, self.processed[rid] - self.table.prefill_done[rid])  # the last token has no KV yet
        refs = self.refs.pop(rid)
        tail_first = [h for h in reversed(refs) if h is not None] if None in refs else refs[::-1]
        states = self.states
        counts = list(map(states.__getitem__, tail_first))
        shared = len(tail_first)
        last = counts.count(1)
        if counts[:last].count(1) == last:  # the usual case: held by others (if any) only the head, a shared prefix
            released = tail_first[:last]
            states.update(zip(tail_first[last:], [count - 1 for count in counts[last:]]))
        else:
            released = [h for h, count in zip(tail_first, counts) if count == 1]
            states.update([(h, count - 1) for h, count in zip(tail_first, counts) if count > 1])
        self._release(released)
        self._version += 1
        self.allocated_blocks -= len(released) + self.blocks[rid] - shared
        self.blocks[rid] = 0
        self.num_allocated_requests -= 1


class ReservingKVCache(KVCache):
    """Orca's cache: each admitted request reserves ``max_tokens`` of KV up front (Vidur's
    ``max_tokens // block_size`` blocks), admitted while that many blocks are free; running
    requests never grow, so there is never a preemption."""

    grows = False

    def __init__(self, table: RequestTable, num_blocks: int, watermark_fraction: float, max_tokens: int) -> None:
        super().__init__(table, num_blocks, watermark_fraction)
        self.reserve_blocks = max_tokens // BLOCK_SIZE
        """Vidur's ``_max_blocks_per_sequence`` (a floor, as Vidur computes it)."""
        self.growth_ceiling = inf

    def admission_blocks(self, rid: int) -> int:
        return self.reserve_blocks

    def can_admit(self, rid: int, reserved: int = 0) -> bool:
        """Orca's admission: the reservation fits (no watermark)."""
        return self.num_blocks - self.allocated_blocks - reserved >= self.reserve_blocks

    def max_admissible_prompt(self) -> float:
        return inf if self.reserve_blocks <= self.num_blocks else -1

    def grow(self, rid: int) -> bool:
        """Nothing to allocate: the reservation covers the whole request."""
        return True


class GroupGrowth:
    """Block growth of requests that all gain one token per iteration (a decode set).

    A member with processed tokens ``offset + tick`` at the formation of iteration ``tick``
    takes a new block when that count first passes its blocks' capacity, then every
    ``BLOCK_SIZE`` ticks. ``phase[t & mask]`` is how many members take one at tick ``t``
    (all zero for a cache that does not grow); the decode-run loop reads the list directly.
    """

    mask = _PHASE_MASK

    def __init__(self, blocks: list[int], grows: bool) -> None:
        self.blocks = blocks
        self.grows = grows
        self.phase = [0] * BLOCK_SIZE
        self._first: dict[int, int] = {}

    def at(self, tick: int) -> int:
        """Members taking a new block when the iteration at ``tick`` is formed."""
        return self.phase[tick & _PHASE_MASK]

    def join(self, rid: int, offset: int, tick: int) -> None:
        """Track ``rid`` (processed ``offset + tick`` now, its blocks exact in the column)."""
        if not self.grows:
            return
        first = self.blocks[rid] * BLOCK_SIZE + 1 - offset  # first tick with processed > capacity
        if not 0 <= first - tick < BLOCK_SIZE:
            raise RuntimeError(f"KV reservation invariant broken for request {rid}")
        self._first[rid] = first
        self.phase[first & _PHASE_MASK] += 1

    def leave(self, rid: int, tick: int) -> None:
        """Stop tracking ``rid`` at ``tick`` and write the blocks it grew back to the column."""
        if not self.grows:
            return
        first = self._first.pop(rid)
        self.phase[first & _PHASE_MASK] -= 1
        if tick > first:
            self.blocks[rid] += (tick - 1 - first) // BLOCK_SIZE + 1
