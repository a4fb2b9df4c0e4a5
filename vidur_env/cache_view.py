"""What a router or the env knows of the replicas' prefix caches: approximate or precise.

- ``approximate``: an own index of the prompt blocks routed to each replica
  (:class:`PrefixIndex`), as SGLang's router keeps a radix tree per worker and llm-d's
  approximate prefix scorer an LRU index; it may believe a block cached after the replica
  evicted it.
- ``precise``: the replicas' actual caches, read through ``replica.kv.match_blocks(keys)`` and
  ``replica.kv.cached_blocks`` (the prefix-caching read API), as Dynamo's KV router learns
  them from KV events.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from vidur_env.kv_cache import BLOCK_SIZE as BLOCK_TOKENS
from vidur_env.stamp_log import drop_oldest, stamp

if TYPE_CHECKING:
    from vidur_env.cluster import ClusterSimulator
    from vidur_env.replica import Replica

CACHE_VIEWS = ("approximate", "precise")
"""The two modes a router (or the env's observation) sees cache state in."""


def prompt_keys(sim: "ClusterSimulator", rid: int) -> tuple[int, ...]:
    """The keys of request ``rid``'s full prompt blocks (empty when it has no prefix identity)."""
    keys = sim.table.block_hashes[rid]
    if keys is None:
        return ()
    return keys[: sim.table.orig_prefill[rid] // BLOCK_TOKENS]


class PrefixIndex:
    """Per replica, an LRU set of the block keys routed there, at most ``capacity`` each.

    A request's keys are stamped from the last to the first, so a prefix's leading block is
    always more recent than any block after it and eviction (oldest first) removes tails
    before heads, as vLLM frees a request's blocks in reverse order. Hence, by the chained
    property of keys, a replica holding key i holds keys 0..i too, and :meth:`match` finds
    the longest indexed prefix by binary search.

    Recency is one stamp per recorded request, written for each of its keys, plus a log of the
    recorded runs of keys in stamp order, read from a front position
    (:mod:`vidur_env.stamp_log`): recording and evicting work on whole runs of keys in C, as a
    prompt's hundreds of keys are stamped again at every request of its session.
    """

    def __init__(self, capacities: Sequence[int]) -> None:
        self.capacities = list(capacities)
        self.blocks: list[dict[int, int]] = [{} for _ in self.capacities]
        self.log_keys: list[list[Sequence[int]]] = [[] for _ in self.capacities]
        self.log_stamps: list[list[int]] = [[] for _ in self.capacities]
        """Per replica, the recorded runs of keys (newest first) and their stamps, oldest first."""
        self.front = [0] * len(self.capacities)
        self.offset = [0] * len(self.capacities)
        """Per replica, the first run not yet read by eviction and its keys already read."""
        self.clock = 0

    def match(self, replica: int, keys: tuple[int, ...]) -> int:
        """Leading blocks of ``keys`` indexed at ``replica``."""
        held = self.blocks[replica]
        lo, hi = 0, len(keys)
        while lo < hi:  # invariant: keys[:lo] held; keys[hi:] not all held
            mid = (lo + hi + 1) // 2
            if keys[mid - 1] in held:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def record(self, replica: int, keys: tuple[int, ...]) -> None:
        """``keys`` were sent to ``replica``: stamp them (the first most recent), evicting the
        least recently stamped keys beyond the capacity."""
        held, log_keys, log_stamps = self.blocks[replica], self.log_keys[replica], self.log_stamps[replica]
        self.clock += 1
        stamp(held, log_keys, log_stamps, keys[::-1], self.clock)
        excess = len(held) - self.capacities[replica]
        self.front[replica], self.offset[replica] = drop_oldest(held, log_keys, log_stamps, self.front[replica],
                                                                self.offset[replica], excess)

    def size(self, replica: int) -> int:
        """Blocks indexed at ``replica`` (SGLang's tree size)."""
        return len(self.blocks[replica])


class CacheView:
    """What is known of the replicas' caches, in one of :data:`CACHE_VIEWS`.

    ``match`` and ``cached`` answer from the router's own index (approximate) or from the
    replicas' KV caches (precise; a cache without the read API holds no prefixes, as a cache
    with prefix caching off); ``record`` tells the index where a request went (a no-op in
    precise mode, where the replica's cache registers blocks itself).
    """

    def __init__(self, mode: str, replicas: Sequence["Replica"]) -> None:
        if mode not in CACHE_VIEWS:
            raise ValueError(f"cache view must be one of {', '.join(CACHE_VIEWS)}; got {mode!r}")
        self.mode = mode
        self.replicas = replicas
        self.index = PrefixIndex([r.num_blocks for r in replicas]) if mode == "approximate" else None

    def match(self, replica: int, keys: tuple[int, ...]) -> int:
        """Leading blocks of ``keys`` believed cached at ``replica``."""
        if not keys:
            return 0
        if self.index is not None:
            return self.index.match(replica, keys)
        match_blocks = getattr(self.replicas[replica].kv, "match_blocks", None)
        return match_blocks(keys) if match_blocks is not None else 0

    def matches(self, keys: tuple[int, ...]) -> list[int]:
        """:meth:`match` at every replica (the mode tested once: every routing decision asks)."""
        if not keys:
            return [0] * len(self.replicas)
        if self.index is not None:
            return [self.index.match(i, keys) for i in range(len(self.replicas))]
        return [match_blocks(keys) if (match_blocks := getattr(r.kv, "match_blocks", None)) is not None else 0
                for r in self.replicas]

    def cached(self, replica: int) -> int:
        """Blocks believed to hold cached content at ``replica``."""
        if self.index is not None:
            return self.index.size(replica)
        return getattr(self.replicas[replica].kv, "cached_blocks", 0)

    def cached_all(self) -> list[int]:
        """:meth:`cached` at every replica."""
        return [self.cached(i) for i in range(len(self.replicas))]

    def record(self, replica: int, keys: tuple[int, ...]) -> None:
        if self.index is not None and keys:
            self.index.record(replica, keys)
