"""Vidur's request metrics, computed once from the per-request timestamp columns.

Names and definitions follow Vidur's ``MetricsStore``; as in Vidur, the normalised metrics
divide by the request's *current* output count, which a restart lowers (the tokens decoded
before a preemption become prompt).
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vidur_env.cluster import ClusterSimulator, ReplicaSummary, replica_summaries

QUANTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}

TIME_METRICS = (
    "request_e2e_time",
    "request_e2e_time_normalized",
    "prefill_e2e_time",
    "request_scheduling_delay",
    "decode_time_execution_plus_preemption_normalized",
)

FULL_CSV_COLUMNS = (
    "request_id", "replica_id", "arrived_at", "num_prefill_tokens", "num_decode_tokens",
    "scheduled_at", "prefill_completed_at", "completed_at", *TIME_METRICS, "request_num_restarts",
)
"""``--csv-columns full``: every per-request column this simulator has, under its attribute names."""

VIDUR_CSV_COLUMNS = {
    "Request Id": "request_id",
    "request_e2e_time": "request_e2e_time",
    "request_e2e_time_normalized": "request_e2e_time_normalized",
    "request_scheduling_delay": "request_scheduling_delay",
    "prefill_e2e_time": "prefill_e2e_time",
    "prefill_time_execution_plus_preemption": "prefill_time_execution_plus_preemption",
    "prefill_time_execution_plus_preemption_normalized": "prefill_time_execution_plus_preemption_normalized",
    "decode_time_execution_plus_preemption_normalized": "decode_time_execution_plus_preemption_normalized",
    "request_inter_arrival_delay": "request_inter_arrival_delay",
    "request_num_tokens": "request_num_tokens",
    "request_num_prefill_tokens": "num_prefill_tokens",
    "request_num_decode_tokens": "num_decode_tokens",
    "request_pd_ratio": "request_pd_ratio",
    "request_num_restarts": "request_num_restarts",
}
"""``--csv-columns vidur`` (default): Vidur's request_metrics.csv header -> our attribute, in
Vidur's column order (``MetricsStore`` joins its request series on ``Request Id``). Only the
columns this simulator computes are written: Vidur's execution, model-execution and preemption
times (``request_execution_time`` ...) need per-batch accounting it does not keep."""

CACHED_TOKENS_COLUMN = "request_num_cached_tokens"
"""Per-request CSV column of prompt tokens served from the prefix cache (with caching on only)."""

CSV_LAYOUTS = {
    "vidur": VIDUR_CSV_COLUMNS,
    "full": {name: name for name in FULL_CSV_COLUMNS},
}
"""Column layouts of :meth:`RequestMetrics.write_csv`: header -> attribute."""
DEFAULT_CSV_LAYOUT = "vidur"
"""Vidur's ``request_metrics.csv`` names and order, so its tools read the file."""


def summarize(values: np.ndarray) -> dict[str, float]:
    """Mean, p50, p90, p99, p99.9 and max (linear-interpolated quantiles, as pandas/Vidur)."""
    if values.size == 0:
        return {"mean": float("nan"), **{k: float("nan") for k in QUANTILES}, "max": float("nan")}
    qs = np.percentile(values, list(QUANTILES.values()))
    return {"mean": float(values.mean()), **{k: float(v) for k, v in zip(QUANTILES, qs)}, "max": float(values.max())}


@dataclass
class RequestMetrics:
    """Per-request metric columns (seconds) for the requests that completed."""

    request_id: np.ndarray
    replica_id: np.ndarray
    arrived_at: np.ndarray
    num_prefill_tokens: np.ndarray
    num_decode_tokens: np.ndarray
    scheduled_at: np.ndarray
    prefill_completed_at: np.ndarray
    completed_at: np.ndarray
    request_num_restarts: np.ndarray
    request_num_cached_tokens: np.ndarray
    """Prompt tokens served from the prefix cache, over the request's admissions."""
    current_decode_tokens: np.ndarray = field(repr=False)
    current_prefill_tokens: np.ndarray = field(repr=False)
    """Prompt tokens at completion (a restart turns processed output into prompt)."""
    prefix_caching: bool = field(default=False, repr=False)
    """Whether any replica caches prefixes: only then is :data:`CACHED_TOKENS_COLUMN` written."""

    @classmethod
    def from_simulator(cls, sim: ClusterSimulator) -> "RequestMetrics":
        table = sim.table
        done = np.flatnonzero(np.asarray(table.completed_at) >= 0)
        col = lambda values, dtype=float: np.asarray(values, dtype=dtype)[done]  # noqa: E731
        return cls(
            request_id=done,
            replica_id=col(table.replica, int),
            arrived_at=col(table.arrived_at),
            num_prefill_tokens=col(table.orig_prefill, int),
            num_decode_tokens=col(table.orig_decode, int),
            scheduled_at=col(table.scheduled_at),
            prefill_completed_at=col(table.prefill_completed_at),
            completed_at=col(table.completed_at),
            request_num_restarts=col(table.restarts, int),
            request_num_cached_tokens=col(table.cached_tokens, int),
            current_decode_tokens=col(table.decode, int),
            current_prefill_tokens=col(table.prefill, int),
            prefix_caching=any(r.kv.prefix_caching for r in sim.replicas),
        )

    @property
    def request_e2e_time(self) -> np.ndarray:
        return self.completed_at - self.arrived_at

    @property
    def request_e2e_time_normalized(self) -> np.ndarray:
        return self.request_e2e_time / self.current_decode_tokens

    @property
    def prefill_e2e_time(self) -> np.ndarray:
        """Time to first token (TTFT)."""
        return self.prefill_completed_at - self.arrived_at

    @property
    def request_scheduling_delay(self) -> np.ndarray:
        return self.scheduled_at - self.arrived_at

    @property
    def decode_time_execution_plus_preemption_normalized(self) -> np.ndarray:
        """Time per output token after the first (TPOT-like), preemption stalls included."""
        return (self.completed_at - self.prefill_completed_at) / self.current_decode_tokens

    @property
    def prefill_time_execution_plus_preemption(self) -> np.ndarray:
        """From the first schedule to the first token."""
        return self.prefill_completed_at - self.scheduled_at

    @property
    def prefill_time_execution_plus_preemption_normalized(self) -> np.ndarray:
        """The same per prompt token at completion (Vidur's divisor)."""
        return self.prefill_time_execution_plus_preemption / self.current_prefill_tokens

    @property
    def request_inter_arrival_delay(self) -> np.ndarray:
        """Gap to the previous request's arrival; NaN (an empty cell, as in Vidur) for the first."""
        return np.concatenate(([np.nan], np.diff(self.arrived_at)))

    @property
    def request_num_tokens(self) -> np.ndarray:
        """Prompt plus output tokens as the request arrived."""
        return self.num_prefill_tokens + self.num_decode_tokens

    @property
    def request_pd_ratio(self) -> np.ndarray:
        """Prompt tokens / output tokens as the request arrived."""
        return self.num_prefill_tokens / self.num_decode_tokens

    def write_csv(self, path: str | Path, layout: str = DEFAULT_CSV_LAYOUT) -> None:
        """One row per completed request, in a layout of :data:`CSV_LAYOUTS`: ``vidur`` writes
        Vidur's request_metrics.csv header (so scripts reading Vidur's files read ours), ``full``
        adds replica ids and raw timestamps under our attribute names. With prefix caching,
        both end with :data:`CACHED_TOKENS_COLUMN` (so files without it are as before)."""
        columns = CSV_LAYOUTS[layout]
        if self.prefix_caching:
            columns = {**columns, CACHED_TOKENS_COLUMN: CACHED_TOKENS_COLUMN}
        values = [np.asarray(getattr(self, name)) for name in columns.values()]
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            for row in zip(*values):
                writer.writerow([_csv_cell(v) for v in row])


def replica_report(summary: ReplicaSummary, makespan: float) -> dict[str, float]:
    iterations = max(summary.num_iterations, 1)
    span = makespan if makespan > 0 else float("nan")
    return {
        "num_requests": summary.num_requests,
        "busy_fraction": summary.busy_time / span,
        "memory_usage_mean": summary.block_time / (summary.num_blocks * span),
        "memory_usage_peak": summary.peak_blocks / summary.num_blocks,
        "mean_batch_size": summary.batch_size_sum / iterations,
        "mean_tokens_per_batch": summary.tokens_sum / iterations,
        "num_iterations": summary.num_iterations,
        "num_preemptions": summary.num_preemptions,
    }


def aggregate_metrics(sim: ClusterSimulator, requests: RequestMetrics | None = None) -> dict[str, Any]:
    """The JSON-able summary the CLI prints: latency distributions, throughput, per replica."""
    requests = requests or RequestMetrics.from_simulator(sim)
    n = len(requests.request_id)
    start = float(requests.arrived_at.min()) if n else 0.0
    makespan = float(requests.completed_at.max()) - start if n else 0.0
    out: dict[str, Any] = {"num_requests": n, "makespan": makespan}
    for name in TIME_METRICS:
        out[name] = summarize(np.asarray(getattr(requests, name), dtype=float))
    restarts = requests.request_num_restarts
    out["request_num_restarts"] = {
        "mean": float(restarts.mean()) if n else 0.0,
        "max": int(restarts.max()) if n else 0,
        "total": int(restarts.sum()),
    }
    tokens = int(requests.num_prefill_tokens.sum() + requests.num_decode_tokens.sum())
    out["throughput_requests_per_s"] = n / makespan if makespan > 0 else float("nan")
    out["throughput_tokens_per_s"] = tokens / makespan if makespan > 0 else float("nan")
    out["replicas"] = [replica_report(s, makespan) for s in replica_summaries(sim)]
    if requests.prefix_caching:
        add_prefix_cache_metrics(out, sim)
    return out


def add_prefix_cache_metrics(out: dict[str, Any], sim: ClusterSimulator) -> None:
    """``prefix_cache_hit_rate`` overall and per replica: prompt tokens served from the cache
    over prompt tokens served or computed (recomputation after a restart included), and
    ``prefix_cache_evictions`` per replica. Written only when a replica caches prefixes, so the
    report is unchanged without."""
    hits = prompts = 0
    for report, replica in zip(out["replicas"], sim.replicas):
        hit, prompt = replica.kv.hit_tokens, replica.stats.prefill_tokens_sum + replica.kv.hit_tokens
        report["prefix_cache_hit_rate"] = hit / prompt if prompt else 0.0
        report["prefix_cache_evictions"] = replica.kv.evictions
        hits += hit
        prompts += prompt
    out["prefix_cache_hit_rate"] = hits / prompts if prompts else 0.0


def _csv_cell(value: np.generic) -> str | int:
    """An integer as is, a float at full precision, NaN as an empty cell (as pandas writes it)."""
    if isinstance(value, np.floating):
        return "" if np.isnan(value) else repr(float(value))
    return int(value)


def write_json(metrics: dict[str, Any], path: str | Path) -> None:
    with open(path, "w") as handle:
        json.dump(metrics, handle, indent=2, default=_jsonable)
        handle.write("\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")
