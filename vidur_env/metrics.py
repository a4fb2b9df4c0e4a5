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

CSV_COLUMNS = (
    "request_id", "replica_id", "arrived_at", "num_prefill_tokens", "num_decode_tokens",
    "scheduled_at", "prefill_completed_at", "completed_at", *TIME_METRICS, "request_num_restarts",
)


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
    current_decode_tokens: np.ndarray = field(repr=False)

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
            current_decode_tokens=col(table.decode, int),
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

    def write_csv(self, path: str | Path) -> None:
        """One row per completed request, with Vidur's metric names as columns."""
        columns = [np.asarray(getattr(self, name)) for name in CSV_COLUMNS]
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_COLUMNS)
            for row in zip(*columns):
                writer.writerow([repr(float(v)) if isinstance(v, np.floating) else int(v) for v in row])


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
    return out


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
