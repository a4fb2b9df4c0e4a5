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

Room for shared blocks (prefix caching): callers name requests, never blocks, and the
per-request column holds the blocks a request *references*. Shared, reference-counted blocks
(hashes chained over the prompt's blocks, LRU eviction of unreferenced cached blocks) change
:meth:`KVCache.admission_blocks` (the prompt's blocks less those already cached), what
:meth:`KVCache.allocate` takes from the pool, what :meth:`KVCache.free` returns to it and what
counts as free, all inside this module; decode growth is always a private block past the
prompt, so :class:`GroupGrowth` holds as it is.
"""
from __future__ import annotations

from math import inf

from vidur_env.request_table import RequestTable

BLOCK_SIZE = 16
"""Tokens per KV block (Vidur's ``block_size``)."""
_PHASE_MASK = BLOCK_SIZE - 1
assert BLOCK_SIZE & _PHASE_MASK == 0, "the grouped-growth phase is a bit mask: BLOCK_SIZE must be a power of two"


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
    def allocate(self, rid: int) -> None:
        """Vidur's ``_allocate_request`` for a new request: its admission blocks."""
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

    def group_growth(self) -> "GroupGrowth":
        """The growth bookkeeping of a group of requests decoding in lockstep here."""
        return GroupGrowth(self.blocks, self.grows)


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
