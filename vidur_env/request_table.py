"""Per-request state of a simulation, held column-wise in flat Python lists or typed arrays.

The simulator touches a handful of scalars per request per iteration; plain lists indexed by
request id are the fastest containers CPython offers for that access pattern (NumPy scalar
indexing is several times slower), and they make the end-of-run metrics a single array
conversion instead of a walk over per-request objects.

A list costs 8 to 36 bytes a request per column (an 8-byte slot, and a boxed number unless
shared), some 350 bytes a request over the table once a run is done, which is what limits a
trace's length. A *compact* table holds the same columns in :class:`array.array` (4 or 8 bytes
an element, :data:`COMPACT_TYPES`): the same indexing from Python, the same values read back,
77 bytes a request, and NumPy views them without a copy, for a few percent of speed (boxing
on every read). Long traces use it (``run_simulation``, hence ``simulate``); the env and other
direct users of the simulator keep lists.
"""
from __future__ import annotations

from array import array
from collections.abc import MutableSequence, Sequence
from typing import Any, Optional

import numpy as np

BlockHashes = Optional[tuple[int, ...]]
"""A request's prefix identity: key i names the content of its first ``16 * (i + 1)`` tokens
(prompt then output; equal keys at i mean equal first 16 * (i + 1) tokens), one key per full
16-token block the workload knows; None = no prefix identity (never hits nor registers)."""

UNSET = -1.0
"""Timestamp value of an event that has not happened yet."""

COMPACT_TYPES = {
    "arrived_at": "d", "orig_prefill": "i", "orig_decode": "i", "total": "i", "prefill": "i", "decode": "i",
    "processed": "i", "prefill_done": "b", "blocks": "i", "scheduled_at": "d", "prefill_completed_at": "d",
    "completed_at": "d", "restarts": "i", "replica": "i", "cached_tokens": "q",
}
"""The :class:`array.array` type code of each column of a compact table (an ``i`` is 4 bytes, so
counts up to 2**31 - 1; a larger one raises OverflowError rather than wrapping)."""


Column = MutableSequence
"""A column: a list, or an :class:`array.array` in a compact table (indexed alike)."""


class ColumnMaker:
    """Makes a table's columns from a source array or a fill value: lists (those made from the
    same source share its number objects, as copies of one list do) or typed arrays."""

    def __init__(self, n: int, compact: bool) -> None:
        self.n = n
        self.compact = compact
        self._lists: dict[int, list] = {}

    def __call__(self, name: str, value: np.ndarray | float | int | bool) -> Column:
        if self.compact:
            return typed_column(COMPACT_TYPES[name], value, self.n)
        if not isinstance(value, np.ndarray):
            return [value] * self.n
        source = self._lists.get(id(value))
        if source is None:
            source = self._lists[id(value)] = value.tolist()
            return source
        return list(source)


def typed_column(code: str, value: np.ndarray | float | int | bool, n: int) -> array:
    """An :class:`array.array` of type ``code``: ``value``'s elements, or ``n`` copies of it.
    Filled through a NumPy view, so no temporary copy of a long column is made; a count the
    type cannot hold raises OverflowError (NumPy's cast would wrap it)."""
    if not isinstance(value, np.ndarray):
        return array(code, [value]) * n
    dtype = np.dtype(code)
    if dtype.kind == "i" and value.size:
        limits = np.iinfo(dtype)
        if value.min() < limits.min or value.max() > limits.max:
            raise OverflowError(f"a value does not fit in array type {code!r} ({limits.min} to {limits.max})")
    column = array(code, [0]) * n
    np.asarray(column)[:] = value
    return column


class NoBlockHashes(Sequence):
    """The ``block_hashes`` column of a workload without prefix identities: None for every
    request, in no memory (a list of Nones is 8 bytes a request)."""

    def __init__(self, n: int) -> None:
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, rid: Any) -> None:
        if isinstance(rid, slice):
            return [None] * len(range(*rid.indices(self._n)))
        if not -self._n <= rid < self._n:
            raise IndexError("request id out of range")
        return None


class RequestTable:
    """Columns of request state, following the fields Vidur keeps on its ``Request`` entity.

    ``prefill`` and ``decode`` are the *current* prompt and output counts: a recompute
    preemption (``restart``) turns every token processed so far into prompt, exactly as Vidur
    does, so the originals are kept separately in ``orig_prefill`` / ``orig_decode``.
    """

    def __init__(
        self,
        arrived_at: np.ndarray,
        num_prefill_tokens: np.ndarray,
        num_decode_tokens: np.ndarray,
        block_hashes: Optional[Sequence[BlockHashes]] = None,
        *,
        compact: bool = False,
    ) -> None:
        n = len(arrived_at)
        if not (len(num_prefill_tokens) == len(num_decode_tokens) == n):
            raise ValueError("arrived_at, num_prefill_tokens and num_decode_tokens differ in length")
        if block_hashes is not None and len(block_hashes) != n:
            raise ValueError(f"block_hashes has {len(block_hashes)} entries for {n} requests")
        arrived = np.asarray(arrived_at, dtype=np.float64)
        prompt = np.asarray(num_prefill_tokens, dtype=np.int64)
        output = np.asarray(num_decode_tokens, dtype=np.int64)
        column = ColumnMaker(n, compact)
        self.arrived_at: Column = column("arrived_at", arrived)
        self.orig_prefill: Column = column("orig_prefill", prompt)
        self.orig_decode: Column = column("orig_decode", output)
        self.total: Column = column("total", prompt + output)
        """Prompt plus output tokens; a restart moves tokens between the two but keeps the sum."""
        self.prefill: Column = column("prefill", prompt)
        self.decode: Column = column("decode", output)
        self.processed: Column = column("processed", 0)
        self.prefill_done: Column = column("prefill_done", False)
        self.blocks: Column = column("blocks", 0)
        """KV blocks held by the request; 0 means it is not in its replica's allocation map."""
        self.scheduled_at: Column = column("scheduled_at", UNSET)
        self.prefill_completed_at: Column = column("prefill_completed_at", UNSET)
        self.completed_at: Column = column("completed_at", UNSET)
        self.restarts: Column = column("restarts", 0)
        self.replica: Column = column("replica", -1)
        self.cached_tokens: Column = column("cached_tokens", 0)
        """Prompt tokens served from a replica's prefix cache, summed over the request's
        admissions (a restarted request is admitted again); 0 without prefix caching."""
        self.block_hashes: Sequence[BlockHashes] = (
            list(block_hashes) if block_hashes is not None else NoBlockHashes(n) if compact else [None] * n)
        """Per request: its prefix block keys (see :data:`BlockHashes`), or None."""

    @property
    def compact(self) -> bool:
        """Whether the columns are typed arrays (see the module docstring)."""
        return isinstance(self.arrived_at, array)

    def __len__(self) -> int:
        return len(self.arrived_at)

    def restart(self, rid: int) -> None:
        """Recompute-style preemption: everything processed so far becomes the new prompt.

        Vidur applies this even to a request whose prompt was only partly prefilled, which
        turns the unprocessed part of its prompt into output tokens; we keep that quirk so
        results match Vidur under memory pressure.
        """
        self.prefill[rid] = self.processed[rid]
        self.decode[rid] = self.total[rid] - self.processed[rid]
        self.processed[rid] = 0
        self.prefill_done[rid] = False
        self.restarts[rid] += 1
