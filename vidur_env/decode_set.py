"""The decode-phase requests of one replica, advanced together without touching each one.

With continuous batching every decoding request gains one token per iteration and a new KV
block at each block boundary, and that is the whole per-iteration update for most of a batch.
So the set keeps one iteration counter (``tick``) and, per request, the offset such that its
processed-token count is ``offset + tick``. What an iteration needs from the set is then O(1):
how many tokens of KV the decodes hold (``kv_sum``), how many of them take a new block now
(``growth``, the KV cache's :class:`~vidur_env.kv_cache.GroupGrowth`), and which
of them finish (a bucket per tick). A request's exact state is written back to the
:class:`RequestTable` only when it leaves the set.
"""
from __future__ import annotations

import heapq
from math import inf

from vidur_env.kv_cache import KVCache
from vidur_env.request_table import RequestTable


class DecodeSet:
    """Requests that decode in every iteration of their replica, tracked by offsets."""

    def __init__(self, table: RequestTable, kv: KVCache) -> None:
        self.table = table
        self.tick = 0
        """Iterations the set has run, all members together."""
        self.size = 0
        self.offset_sum = 0
        self._offset: dict[int, int] = {}
        self.growth = kv.group_growth()
        """Which members take a new block at which tick (``growth.phase`` is read directly by
        the decode-run loop)."""
        self._done_at: dict[int, list[int]] = {}
        self._done_ticks: list[int] = []

    def __contains__(self, rid: int) -> bool:
        return rid in self._offset

    def kv_sum(self) -> int:
        """Tokens processed by all members, i.e. the KV their decodes attend to."""
        return self.offset_sum + self.size * self.tick

    def processed(self, rid: int) -> int:
        return self._offset[rid] + self.tick

    def next_completion(self) -> float:
        """Tick at which the next member completes (inf when none)."""
        ticks = self._done_ticks
        while ticks and ticks[0] not in self._done_at:
            heapq.heappop(ticks)
        return ticks[0] if ticks else inf

    def join(self, rid: int) -> None:
        """Start tracking ``rid``, whose processed count and blocks in the table are exact."""
        table = self.table
        offset = table.processed[rid] - self.tick
        self._offset[rid] = offset
        self.offset_sum += offset
        self.size += 1
        self.growth.join(rid, offset, self.tick)
        done = table.total[rid] - offset
        bucket = self._done_at.get(done)
        if bucket is None:
            self._done_at[done] = [rid]
            heapq.heappush(self._done_ticks, done)
        else:
            bucket.append(rid)

    def leave(self, rid: int) -> None:
        """Stop tracking ``rid`` and write its exact processed count and blocks back."""
        table = self.table
        offset = self._offset.pop(rid)
        self.offset_sum -= offset
        self.size -= 1
        table.processed[rid] = offset + self.tick
        self.growth.leave(rid, self.tick)
        done = table.total[rid] - offset
        bucket = self._done_at[done]
        bucket.remove(rid)
        if not bucket:
            del self._done_at[done]

    def advance(self, iterations: int = 1) -> list[int]:
        """Run ``iterations`` iterations; return the members that completed (now left)."""
        self.tick += iterations
        finished = self._done_at.get(self.tick)
        if not finished:
            return []
        finished = list(finished)
        for rid in finished:
            self.leave(rid)
        return finished
