"""A least-recently-used order kept as a dict of stamps plus an append-only log.

Both LRU structures on the prefix-caching path (a replica's unreferenced cached blocks in
:class:`vidur_env.kv_cache.PrefixKVCache`, a router's index of routed blocks in
:class:`vidur_env.cache_view.PrefixIndex`) touch a prompt's hundreds of block keys at once. An
``OrderedDict`` moves them one by one; here a touch is two bulk operations done in C: the
keys' new stamps go into a plain dict (key -> stamp) and (key, stamp) pairs are appended to a
log in stamp order. A log entry whose key now holds another stamp, or is gone, is stale, so
the oldest live keys are the first log entries that still match the dict.
"""
from __future__ import annotations

from collections import deque
from itertools import compress, count
from operator import eq

READ_AHEAD = 16
"""Log entries read beyond those still to drop in one pass: most passes then find enough live
keys at once even where the log's front is mostly stale (a pass costs more than an entry)."""


def drop_oldest(held: dict[int, int], log_keys: list[int], log_stamps: list[int], front: int, number: int) -> int:
    """Delete from ``held`` its ``number`` live keys logged earliest from ``front`` on (``held``
    must have that many) and return the new front, the first entry not read. When the read
    part is most of the log it is dropped (amortised O(1) per entry) and the front is 0."""
    while number > 0:
        end = front + 2 * number + READ_AHEAD
        oldest = log_keys[front:end]
        live = list(map(eq, map(held.get, oldest), log_stamps[front:end]))
        found = live.count(True)
        if found > number:  # stop right after the number-th live entry
            cut = list(compress(count(), live))[number - 1] + 1
            oldest, live, found = oldest[:cut], live[:cut], number
        deque(map(held.__delitem__, compress(oldest, live)), maxlen=0)
        number -= found
        front += len(oldest)
    if 2 * front > len(log_keys):
        del log_keys[:front], log_stamps[:front]
        front = 0
    return front
