"""Per-request state of a simulation, held column-wise in flat Python lists.

The simulator touches a handful of scalars per request per iteration; plain lists indexed by
request id are the fastest containers CPython offers for that access pattern (NumPy scalar
indexing is several times slower), and they make the end-of-run metrics a single array
conversion instead of a walk over per-request objects.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np

BlockHashes = Optional[tuple[int, ...]]
"""A request's prefix identity: key i names the content of its first ``16 * (i + 1)`` tokens
(prompt then output; equal keys at i mean equal first 16 * (i + 1) tokens), one key per full
16-token block the workload knows; None = no prefix identity (never hits nor registers)."""

UNSET = -1.0
"""Timestamp value of an event that has not happened yet."""


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
    ) -> None:
        n = len(arrived_at)
        if not (len(num_prefill_tokens) == len(num_decode_tokens) == n):
            raise ValueError("arrived_at, num_prefill_tokens and num_decode_tokens differ in length")
        if block_hashes is not None and len(block_hashes) != n:
            raise ValueError(f"block_hashes has {len(block_hashes)} entries for {n} requests")
        self.arrived_at: list[float] = np.asarray(arrived_at, dtype=np.float64).tolist()
        self.orig_prefill: list[int] = np.asarray(num_prefill_tokens, dtype=np.int64).tolist()
        self.orig_decode: list[int] = np.asarray(num_decode_tokens, dtype=np.int64).tolist()
        self.total: list[int] = [p + d for p, d in zip(self.orig_prefill, self.orig_decode)]
        """Prompt plus output tokens; a restart moves tokens between the two but keeps the sum."""
        self.prefill: list[int] = list(self.orig_prefill)
        self.decode: list[int] = list(self.orig_decode)
        self.processed: list[int] = [0] * n
        self.prefill_done: list[bool] = [False] * n
        self.blocks: list[int] = [0] * n
        """KV blocks held by the request; 0 means it is not in its replica's allocation map."""
        self.scheduled_at: list[float] = [UNSET] * n
        self.prefill_completed_at: list[float] = [UNSET] * n
        self.completed_at: list[float] = [UNSET] * n
        self.restarts: list[int] = [0] * n
        self.replica: list[int] = [-1] * n
        self.block_hashes: list[BlockHashes] = [None] * n if block_hashes is None else list(block_hashes)
        """Per request: its prefix block keys (see :data:`BlockHashes`), or None."""
        self.cached_tokens: list[int] = [0] * n
        """Prompt tokens served from a replica's prefix cache, summed over the request's
        admissions (a restarted request is admitted again); 0 without prefix caching."""

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
