"""Vidur's request metrics, computed once from the per-request timestamp columns.

Names and definitions follow Vidur's ``MetricsStore``; as in Vidur, the normalised metrics
divide by the request's *current* output count, which a restart lowers (the tokens decoded
before a preemption become prompt).

The per-request CSV can be written at the end (:meth:`RequestMetrics.write_csv`) or while the
simulation runs (:class:`CsvStream`): rows are in request order, so a row is written once
every earlier request has completed, and both give the same bytes.
"""
from __future__ import annotations

import csv
import json
import math
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vidur_env.cluster import ClusterSimulator, ReplicaSummary, replica_summaries
from vidur_env.request_table import RequestTable

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
    previous_arrival: float = field(default=math.nan, repr=False)
    """Arrival time of the completed request before the first one here (NaN: none), from which
    the first inter-arrival delay is measured when a run's rows come in parts."""

    @classmethod
    def from_simulator(cls, sim: ClusterSimulator) -> "RequestMetrics":
        return cls.from_table(sim.table, prefix_caching=cls.caches_prefixes(sim))

    @staticmethod
    def caches_prefixes(sim: ClusterSimulator) -> bool:
        """Whether any replica of ``sim`` caches prefixes (see :attr:`prefix_caching`)."""
        return any(r.kv.prefix_caching for r in sim.replicas)

    @classmethod
    def from_table(cls, table: RequestTable, start: int = 0, stop: int | None = None, prefix_caching: bool = False,
                   previous_arrival: float = math.nan) -> "RequestMetrics":
        """The completed requests with ids in [``start``, ``stop``). When all of them completed,
        the columns of a compact table are views of it, not copies (a long trace's metrics
        need no second copy of its columns)."""
        stop = len(table) if stop is None else stop
        done = np.flatnonzero(_window(table.completed_at, float, start, stop) >= 0)
        rows = slice(None) if done.size == stop - start else done
        col = lambda values, dtype=float: _window(values, dtype, start, stop)[rows]  # noqa: E731
        return cls(
            request_id=done + start if start else done,
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
            prefix_caching=prefix_caching,
            previous_arrival=previous_arrival,
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
        return np.diff(self.arrived_at, prepend=self.previous_arrival)

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
        columns = csv_columns(layout, self.prefix_caching)
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            self.write_rows(writer, columns)

    def write_rows(self, writer: Any, columns: dict[str, str]) -> None:
        """The rows of ``columns`` (header -> attribute) to a ``csv.writer``, converted to Python
        numbers a batch at a time (a NumPy scalar per cell costs several times more)."""
        values = [np.asarray(getattr(self, name)) for name in columns.values()]
        for start in range(0, len(self.request_id), CSV_BATCH_ROWS):
            writer.writerows(zip(*(_csv_cells(column[start:start + CSV_BATCH_ROWS]) for column in values)))


CSV_BATCH_ROWS = 4096
"""Rows converted to Python numbers at once when writing the CSV."""


def csv_columns(layout: str, prefix_caching: bool) -> dict[str, str]:
    """The CSV header -> attribute of ``layout`` (:data:`CSV_LAYOUTS`), ending with
    :data:`CACHED_TOKENS_COLUMN` when a replica caches prefixes."""
    columns = CSV_LAYOUTS[layout]
    return {**columns, CACHED_TOKENS_COLUMN: CACHED_TOKENS_COLUMN} if prefix_caching else columns


class CsvStream:
    """The per-request CSV of a running simulation, written as requests complete.

    After each :meth:`write_completed`, the rows of every request before the first one still
    in flight are on disk; a row waits only for the earlier requests (its place in the file),
    so what is held back is bounded by the requests in flight, not by the trace. The file is
    the one :meth:`RequestMetrics.write_csv` writes at the end of the run, byte for byte (every
    request has completed by then); a run that fails leaves the rows written so far.
    """

    def __init__(self, path: str | Path, layout: str, prefix_caching: bool) -> None:
        self.path = path
        self.prefix_caching = prefix_caching
        self.columns = csv_columns(layout, prefix_caching)
        self.rows = 0
        """Requests whose rows are written (the ids below this)."""
        self._handle = open(path, "w", newline="")
        self._writer = csv.writer(self._handle)
        self._writer.writerow(self.columns)

    def write_completed(self, table: RequestTable, routed: int) -> None:
        """Write the rows of the requests from the first unwritten one up to (not including)
        the first of the ``routed`` requests that has not completed."""
        start = self.rows
        pending = np.flatnonzero(_window(table.completed_at, float, start, routed) < 0)
        stop = start + int(pending[0]) if pending.size else routed
        if stop == start:
            return
        previous = table.arrived_at[start - 1] if start else math.nan
        part = RequestMetrics.from_table(table, start, stop, self.prefix_caching, previous)
        try:
            part.write_rows(self._writer, self.columns)
        except OSError as error:  # name the file, as open() does
            raise OSError(error.errno, error.strerror, str(self.path)) from error
        self.rows = stop

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "CsvStream":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


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


def _csv_cells(values: np.ndarray) -> list:
    """A column's cells: integers as they are, floats at full precision (``csv`` writes a float's
    ``repr``), NaN as an empty cell (as pandas writes it)."""
    cells = values.tolist()
    if values.dtype.kind == "f":
        for i in np.flatnonzero(np.isnan(values)).tolist():
            cells[i] = ""
    return cells


def _window(values: Sequence, dtype: type, start: int, stop: int) -> np.ndarray:
    """``values[start:stop]`` as an array: a view of a typed array's memory (no copy), or the
    conversion of a list's slice (to ``dtype``, as it always was)."""
    if isinstance(values, array):
        return np.asarray(values)[start:stop]
    return np.asarray(values[start:stop], dtype=dtype)


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
