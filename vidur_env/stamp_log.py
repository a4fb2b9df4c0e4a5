"""A least-recently-used order kept as a dict of stamps plus a log of stamped runs of keys.

Both LRU structures on the prefix-caching path (a replica's unreferenced cached blocks in
:class:`vidur_env.kv_cache.PrefixKVCache`, a router's index of routed blocks in
:class:`vidur_env.cache_view.PrefixIndex`) touch a prompt's hundreds of block keys at once, in
a known order. A touch is one stamp for the whole run: written for every key into a plain
dict (key -> stamp) in one bulk update done in C, and the run appended to a log in stamp order,
its keys in their eviction order (the first leaves first). A key whose stamp in the dict is
not its run's (touched again later, or gone) is stale there, so the oldest live keys are the
first keys of the log, from the front, that still hold their run's stamp.

A key twice in one run is live at its last place only, as if each place had its own stamp,
later ones newer (:func:`distinct`: settled when eviction first reads the run, which costs
nothing until then).
"""
from __future__ import annotations

from collections import deque
from itertools import compress, count, repeat
from operator import eq
from typing import Sequence


def distinct(run: Sequence[int]) -> tuple[int, ...]:
    """``run`` with each key at its last place only."""
    return tuple(dict.fromkeys(reversed(run)))[::-1]


def stamp(held: dict[int, int], runs: list[Sequence[int]], stamps: list[int], keys: Sequence[int],
          value: int) -> None:
    """Give ``keys`` the stamp ``value`` (newer than every stamp logged), in eviction order."""
    held.update(zip(keys, repeat(value)))
    runs.append(keys)
    stamps.append(value)


def live_keys(held: dict[int, int], runs: list[Sequence[int]], stamps: list[int], front: int,
              offset: int) -> list[int]:
    """The live keys logged from ``front`` (its first ``offset`` keys read), oldest first."""
    keys: list[int] = []
    for i in range(front, len(runs)):
        run = distinct(runs[i])[offset if i == front else 0:]
        keys.extend(compress(run, map(eq, map(held.get, run), repeat(stamps[i]))))
    return keys


def drop_oldest(held: dict[int, int], runs: list[Sequence[int]], stamps: list[int], front: int, offset: int,
                number: int) -> tuple[int, int]:
    """Delete from ``held`` its ``number`` oldest live keys (it must have that many), reading
    the log from ``front`` with its first ``offset`` keys read; return the new (front, offset).
    When the read runs are most of the log they are dropped (amortised O(1) per run)."""
    while number > 0:
        if offset == 0:
            runs[front] = distinct(runs[front])
        run = runs[front][offset:]
        live = list(map(eq, map(held.get, run), repeat(stamps[front])))
        found = live.count(True)
        if found > number:  # stop right after the number-th live key, inside this run
            cut = list(compress(count(), live))[number - 1] + 1
            deque(map(held.__delitem__, compress(run[:cut], live[:cut])), maxlen=0)
            offset += cut
            break
        deque(map(held.__delitem__, compress(run, live)), maxlen=0)
        number -= found
        front, offset = front + 1, 0
    if 2 * front > len(runs):
        del runs[:front], stamps[:front]
        front = 0
    return front, offset
