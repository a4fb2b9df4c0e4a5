"""Readers for Vidur-format profiling CSVs (mlp.csv, attention.csv, all_reduce.csv).

They select the rows Vidur's predictor would train on (same model shape and TP filters). The
``*_profile`` readers average repeated measurements of one grid point into curves (for
interpolation); the ``*_rows`` readers keep every row, duplicates dropped as Vidur drops them,
per op (a forest's training set). The time sources and the coefficient fitter
(benchmarks/fit_time_model.py) all read profiles through here, so they see the same numbers.
Only the standard library and NumPy are used: no pandas at run time.
"""
from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Mapping

import numpy as np

from ..hardware import ModelSpec
from .errors import ProfileDataError

__all__ = [
    "Curve",
    "Rows",
    "RowCurves",
    "all_reduce_profile",
    "all_reduce_rows",
    "attention_profile",
    "attention_rows",
    "linear_op_rows",
    "linear_ops_profile",
    "profile_paths",
]

Curve = tuple[np.ndarray, np.ndarray]
"""(sorted x values, mean time in ms at each x)."""

RowCurves = dict[int, Curve]
"""A 2-D grid stored row by row: row value -> curve over the other axis."""

Rows = tuple[np.ndarray, np.ndarray]
"""(features, one row per measurement and one column per feature; time in ms of each row)."""

LINEAR_OPS_REQUIRED = ("attn_pre_proj", "attn_post_proj", "attn_rope", "mlp_up_proj", "mlp_down_proj", "mlp_act")
"""Linear ops Vidur always adds per layer."""
LINEAR_OPS_OPTIONAL = ("input_layernorm", "post_attention_layernorm", "add")
"""Ops Vidur treats as 0 ms when their column is absent or empty."""


def profile_paths(root: Path | str, device: str, model: str, network: str) -> dict[str, Path]:
    """Where Vidur looks for each profile (its ``*_input_file`` defaults, relative to one root).

    compute/<device>/<model>/mlp.csv and attention.csv; network/<network>/all_reduce.csv.
    """
    root = Path(root)
    compute = root / "compute" / device / model
    return {
        "mlp": compute / "mlp.csv",
        "attention": compute / "attention.csv",
        "all_reduce": root / "network" / network / "all_reduce.csv",
    }


def _read_table(path: Path) -> dict[str, list[str]]:
    """Every column of a CSV as a list of raw strings, with a clear error if the file is missing or empty."""
    if not path.is_file():
        raise ProfileDataError(f"profiling file not found: {path}")
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise ProfileDataError(f"{path}: empty file (no header line)")
        columns: dict[str, list[str]] = {name: [] for name in header}
        for line_number, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise ProfileDataError(f"{path}, line {line_number}: {len(row)} fields, header has {len(header)}")
            for name, value in zip(header, row):
                columns[name].append(value)
    return columns


def _column(table: Mapping[str, list[str]], path: Path, name: str, *, missing_as_zero: bool = False) -> np.ndarray:
    """One column as floats (booleans as 0/1, empty cells as NaN), naming the file and column on error."""
    if name not in table:
        if missing_as_zero:
            return np.zeros(len(next(iter(table.values()), [])))
        raise ProfileDataError(f"{path}: missing column {name!r}")
    values = np.empty(len(table[name]))
    for index, raw in enumerate(table[name]):
        text = raw.strip()
        if text in ("True", "true"):
            values[index] = 1.0
        elif text in ("False", "false"):
            values[index] = 0.0
        elif text == "":
            values[index] = np.nan
        else:
            try:
                values[index] = float(text)
            except ValueError:
                raise ProfileDataError(f"{path}, line {index + 2}, column {name!r}: not a number: {raw!r}") from None
    if missing_as_zero:
        values = np.nan_to_num(values, nan=0.0)
    return values


def _timing_column(table: Mapping[str, list[str]], path: Path, name: str, *, missing_as_zero: bool = False) -> np.ndarray:
    """A column of measured times (ms): empty cells mean "not measured" (NaN, or 0 with
    ``missing_as_zero``), but a written value must be a finite number > 0; a negative, zero, NaN
    or infinite time raises naming the file, line and column (it would silently skew latencies)."""
    if name not in table:
        return _column(table, path, name, missing_as_zero=missing_as_zero)
    values = _column(table, path, name)
    written = np.array([raw.strip() != "" for raw in table[name]], dtype=bool)
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(written & ~(np.isfinite(values) & (values > 0)))
    if bad.size:
        index = int(bad[0])
        raise ProfileDataError(
            f"{path}, line {index + 2}, column {name!r}: a time must be a finite number > 0 ms, "
            f"got {table[name][index]!r}"
        )
    return np.nan_to_num(values, nan=0.0) if missing_as_zero else values


def _select(table: Mapping[str, list[str]], path: Path, filters: Mapping[str, float]) -> np.ndarray:
    """Boolean mask of rows matching every ``column == value`` filter; error listing what is there if none do."""
    mask = np.ones(len(next(iter(table.values()), [])), dtype=bool)
    for name, wanted in filters.items():
        mask &= _column(table, path, name) == wanted
    if not mask.any():
        wanted_text = ", ".join(f"{k}={v:g}" for k, v in filters.items())
        present = "; ".join(
            f"{k} in [{', '.join(f'{v:g}' for v in np.unique(_column(table, path, k)))}]" for k in filters
        )
        raise ProfileDataError(f"{path}: no rows with {wanted_text} (present: {present})")
    return mask


def _first_occurrences(table: Mapping[str, list[str]]) -> np.ndarray:
    """Boolean mask keeping the first of every set of identical rows (Vidur's ``drop_duplicates``)."""
    seen: set[tuple[str, ...]] = set()
    keep = []
    for row in zip(*table.values()):
        keep.append(row not in seen)
        seen.add(row)
    return np.array(keep, dtype=bool)


def _measured(features: np.ndarray, ms: np.ndarray, path: Path, what: str) -> Rows:
    """The rows whose time was measured (a forest's training set); an error if there are none."""
    keep = ~np.isnan(ms)
    if not keep.any():
        raise ProfileDataError(f"{path}: no timing values for {what}")
    return features[keep], ms[keep]


def _mean_curve(x: np.ndarray, y: np.ndarray, path: Path, what: str) -> Curve:
    """Average repeated measurements at one x, dropping rows whose time is missing."""
    keep = ~np.isnan(y)
    if not keep.any():
        raise ProfileDataError(f"{path}: no timing values for {what}")
    xs, inverse = np.unique(x[keep], return_inverse=True)
    sums = np.bincount(inverse, weights=y[keep])
    counts = np.bincount(inverse)
    return xs, sums / counts


def _rows(row_values: np.ndarray, x: np.ndarray, y: np.ndarray, path: Path, what: str) -> RowCurves:
    """Split a 2-D grid into one averaged curve per row value."""
    grouped: dict[int, list[int]] = defaultdict(list)
    for index, row in enumerate(row_values):
        grouped[int(row)].append(index)
    curves = {}
    for row, indices in sorted(grouped.items()):
        picked = np.asarray(indices)
        if not np.isnan(y[picked]).all():
            curves[row] = _mean_curve(x[picked], y[picked], path, f"{what} row {row}")
    if not curves:
        raise ProfileDataError(f"{path}: no timing values for {what}")
    return curves


def _model_filters(model: ModelSpec, tp: int, *, mlp: bool) -> dict[str, float]:
    """Column filters Vidur applies to pick one model shape and TP degree out of a shared CSV."""
    if mlp:
        return {
            "n_head": model.num_q_heads,
            "n_kv_head": model.num_kv_heads,
            "n_embd": model.hidden_size,
            "n_expanded_embd": model.ffn_size,
            "use_gated_mlp": float(model.gated_mlp),
            "num_tensor_parallel_workers": tp,
        }
    return {
        "n_embd": model.hidden_size,
        "n_q_head": model.num_q_heads,
        "n_kv_head": model.num_kv_heads,
        "num_tensor_parallel_workers": tp,
    }


def _linear_ops(path: Path, model: ModelSpec, tp: int, *, unique: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Token count and per-op median (ms) of every selected mlp.csv row (optional ops 0 when absent)."""
    table = _read_table(path)
    mask = _select(table, path, _model_filters(model, tp, mlp=True))
    if unique:
        mask &= _first_occurrences(table)
    ops = {op: _timing_column(table, path, f"time_stats.{op}.median")[mask] for op in LINEAR_OPS_REQUIRED}
    for op in LINEAR_OPS_OPTIONAL:
        if op == "post_attention_layernorm" and not model.post_attn_norm:
            continue
        ops[op] = _timing_column(table, path, f"time_stats.{op}.median", missing_as_zero=True)[mask]
    return _column(table, path, "num_tokens")[mask], ops


def linear_ops_profile(path: Path | str, model: ModelSpec, tp: int) -> Curve:
    """Per-layer time of all linear ops (sum of their medians, ms) against the batch token count."""
    path = Path(path)
    tokens, ops = _linear_ops(path, model, tp, unique=False)
    return _mean_curve(tokens, sum(ops.values()), path, "linear ops")


def linear_op_rows(path: Path | str, model: ModelSpec, tp: int) -> dict[str, Rows]:
    """Per linear op, its rows: features ``(num_tokens,)`` and the op's median in ms; rows whose
    time is missing are left out."""
    path = Path(path)
    tokens, ops = _linear_ops(path, model, tp, unique=True)
    return {op: _measured(tokens[:, None], ms, path, op) for op, ms in ops.items()}


def _all_reduce(path: Path, tp: int, *, unique: bool) -> tuple[np.ndarray, np.ndarray]:
    """Message size (bytes) and time (ms) of every all-reduce row for ``tp`` workers on one node."""
    table = _read_table(path)
    if "collective" not in table:
        raise ProfileDataError(f"{path}: missing column 'collective'")
    mask = np.array([value == "all_reduce" for value in table["collective"]])
    mask &= _select(table, path, {"num_workers": tp, "devices_per_node": tp})
    if not mask.any():
        raise ProfileDataError(f"{path}: no rows with collective=all_reduce, num_workers={tp}, devices_per_node={tp}")
    if unique:
        mask &= _first_occurrences(table)
    return _column(table, path, "size")[mask], _timing_column(table, path, "time_stats.all_reduce.median")[mask]


def all_reduce_profile(path: Path | str, tp: int) -> Curve:
    """All-reduce time (ms) against message size in bytes, for ``tp`` workers all on one node (Vidur's filter)."""
    path = Path(path)
    sizes, ms = _all_reduce(path, tp, unique=False)
    return _mean_curve(sizes, ms, path, "all_reduce")


def all_reduce_rows(path: Path | str, tp: int) -> Rows:
    """All-reduce rows: features ``(size in bytes,)`` and time in ms (missing times left out)."""
    path = Path(path)
    sizes, ms = _all_reduce(path, tp, unique=True)
    return _measured(sizes[:, None], ms, path, "all_reduce")


def _attention(path: Path, model: ModelSpec, tp: int, block_size: int, *, unique: bool) -> dict[str, np.ndarray]:
    """The selected attention.csv columns, with boolean masks ``decode`` (prefill_chunk_size 0,
    as in Vidur) and ``prefill`` over them."""
    table = _read_table(path)
    filters = _model_filters(model, tp, mlp=False)
    filters["block_size"] = block_size
    mask = _select(table, path, filters)
    if unique:
        mask &= _first_occurrences(table)
    chunk = _column(table, path, "prefill_chunk_size")
    columns = {
        "decode": mask & (chunk == 0),
        "prefill": mask & (chunk > 0),
        "chunk": chunk,
        "kv": _column(table, path, "kv_cache_size"),
        "batch": _column(table, path, "batch_size"),
        "decode_ms": _timing_column(table, path, "time_stats.attn_decode.median"),
        "prefill_ms": _timing_column(table, path, "time_stats.attn_prefill.median"),
    }
    if not columns["decode"].any() or not columns["prefill"].any():
        raise ProfileDataError(
            f"{path}: needs both decode (prefill_chunk_size=0) and prefill rows for {model.name}, tp={tp}"
        )
    return columns


def attention_profile(
    path: Path | str, model: ModelSpec, tp: int, block_size: int = 16
) -> tuple[RowCurves, RowCurves]:
    """Decode and prefill attention grids (ms per layer).

    Decode rows are keyed by batch size with curves over the KV length; prefill rows by chunk
    size with curves over the prior KV length.
    """
    path = Path(path)
    c = _attention(path, model, tp, block_size, unique=False)
    decode, prefill = c["decode"], c["prefill"]
    return (
        _rows(c["batch"][decode], c["kv"][decode], c["decode_ms"][decode], path, "attn_decode"),
        _rows(c["chunk"][prefill], c["kv"][prefill], c["prefill_ms"][prefill], path, "attn_prefill"),
    )


def attention_rows(path: Path | str, model: ModelSpec, tp: int, block_size: int = 16) -> tuple[Rows, Rows]:
    """Decode rows (features ``(batch_size, kv_cache_size)``) and prefill rows (features
    ``(kv_cache_size, prefill_chunk_size)``), each with its time in ms; missing times left out."""
    path = Path(path)
    c = _attention(path, model, tp, block_size, unique=True)
    decode, prefill = c["decode"], c["prefill"]
    return (
        _measured(np.column_stack([c["batch"][decode], c["kv"][decode]]), c["decode_ms"][decode], path, "attn_decode"),
        _measured(np.column_stack([c["kv"][prefill], c["chunk"][prefill]]), c["prefill_ms"][prefill], path,
                  "attn_prefill"),
    )
