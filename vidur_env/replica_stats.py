"""Running totals of one replica, kept as it runs for the end-of-run metrics and the rewards."""
from __future__ import annotations

from dataclasses import dataclass


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
    first_token_arrival_sum: float = 0.0
    first_token_arrival_sq_sum: float = 0.0
    first_token_wait_sq_sum: float = 0.0
    """Of the requests that emitted their first token: the sums of their arrival times, of
    those squared and of their TTFTs squared, which the ``ttft_squared`` reward's area needs."""

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
