"""Readers for request traces: Vidur's CSVs, the Azure LLM inference CSV and Mooncake JSONL.

Every reader returns the same :class:`Trace` (arrival seconds, prompt and output token counts,
and the 1-based file line of each row), so the workload generators never care where a trace
came from. Bad input raises :class:`TraceFormatError` naming the file, the line and the field:
a 20k-row trace with one typo should say where the typo is, not fail deep inside NumPy.

Formats (``fmt`` argument, or ``"auto"`` to detect from the header / first line):

========================  ==========================================================  ==============
format                    columns / keys                                               time unit
========================  ==========================================================  ==============
``vidur``                 ``arrived_at,num_prefill_tokens,num_decode_tokens``          seconds
``vidur_lengths``         ``num_prefill_tokens,num_decode_tokens`` (extra columns ok)  (no times)
``azure``                 ``TIMESTAMP,ContextTokens,GeneratedTokens``                  datetime text
``mooncake``              JSON lines with ``timestamp``, ``input_length``,             milliseconds
                          ``output_length``, optional ``hash_ids`` (other keys
                          ignored)
========================  ==========================================================  ==============

Prefix identity (for prefix caching and cache-aware routers), optional in every format:

- Mooncake ``hash_ids``: a list of integers >= 0, one per 512-token block of the prompt
  (Mooncake's block size); equal ids at equal positions mean equal prompt prefixes. Each id
  stands for 32 sixteen-token blocks, keyed ``id * 32 + j`` (:func:`expand_block_ids`), up to
  the prompt's full 16-token blocks (``prompt // 16`` keys; the output is not covered).
- CSV formats: an optional ``block_hashes`` column holding space-separated integers >= 0, one
  per full 16-token block of the request's tokens (prompt, then output), key ``i`` naming the
  content of its first ``16 * (i + 1)`` tokens (so two rows share a cached prefix exactly as far
  as their leading keys agree); a blank cell means no prefix identity. At most
  ``(prompt + output) // 16`` keys.

A malformed list raises naming the file, the line and ``hash_ids`` / ``block_hashes``.

Times are kept as the file gives them (Vidur's replay does not shift a trace to start at 0),
except Azure datetimes, which become seconds after the first row.

The package ships one small trace in the ``vidur`` format, selected by the name ``"sample"``
(:data:`SAMPLE_TRACES`, :func:`trace_path`): 300 requests drawn by
``benchmarks/make_sample_trace.py`` from the embedded conversation-trace fit, not real traffic.
The full public traces are Azure's LLM inference traces (github.com/Azure/AzurePublicDataset),
Mooncake's (github.com/kvcache-ai/Mooncake) and Vidur's processed ones
(github.com/microsoft/vidur, ``data/processed_traces``).
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Optional, Union

import numpy as np

from vidur_env.errors import ConfigError, setting
from vidur_env.kv_cache import BLOCK_SIZE as CACHE_BLOCK_TOKENS

PathLike = Union[str, Path]

FORMATS = ("vidur", "vidur_lengths", "azure", "mooncake")
"""Trace formats :func:`read_trace` understands (plus :data:`AUTO_FORMAT`)."""
AUTO_FORMAT = "auto"
"""The format setting that detects the format from the file's header or first line (the default)."""
FORMAT_CHOICES = (*FORMATS, AUTO_FORMAT)
"""What a format setting accepts: ``read_trace``'s ``fmt``, ``WorkloadConfig.trace_format``, ``--trace-format``."""

ZERO_TOKEN_POLICIES = ("error", "drop", "clip")
"""What to do with rows whose prompt or output has 0 tokens: raise, drop them, or raise them to 1
(Vidur's replay clips to 1 silently; here the choice is explicit and the count is reported). The
first is the default."""

SAMPLE_TRACES = {"sample": "sample_trace.csv"}
"""Traces shipped in ``vidur_env/data``, by the name that selects them (``--trace sample``)."""

_CSV_COLUMNS = {
    "vidur": ("arrived_at", "num_prefill_tokens", "num_decode_tokens"),
    "vidur_lengths": (None, "num_prefill_tokens", "num_decode_tokens"),
    "azure": ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
}
"""(time, prompt, output) column names of each CSV format; None = the format has no times."""

_MOONCAKE_KEYS = ("timestamp", "input_length", "output_length")

HASH_COLUMN = "block_hashes"
"""The optional CSV column of 16-token block keys."""
MOONCAKE_HASH_KEY = "hash_ids"
"""The optional Mooncake key of 512-token block ids."""
MOONCAKE_BLOCK_TOKENS = 512
"""Tokens per Mooncake ``hash_ids`` entry."""

_AZURE_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d{1,9})?$")
"""``2023-11-16 18:15:46.6805900``: Azure writes 7 fractional digits, more than ``datetime``
accepts, so the column is parsed by NumPy at nanosecond resolution (up to 9 digits)."""


class TraceFormatError(ConfigError):
    """A trace that cannot be read. The message is ``file:line: field: problem``."""

    def __init__(self, path: PathLike, line: int, field: Optional[str], problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        where = f"{self.path}:{line}"
        super().__init__(f"{where}: {field}: {problem}" if field else f"{where}: {problem}")


@dataclass(frozen=True)
class Trace:
    """A parsed trace, one row per request, in file order."""

    path: str
    format: str
    arrived_at: Optional[np.ndarray]
    """float64 seconds, non-decreasing; None for a length-only trace."""
    num_prefill_tokens: np.ndarray
    """int64 prompt tokens."""
    num_decode_tokens: np.ndarray
    """int64 output tokens."""
    line_numbers: np.ndarray
    """1-based file line of each row, so later checks (e.g. a max_tokens cut) can name it."""
    num_zero_rows: int = 0
    """Rows with a 0 token count that the ``zero_tokens`` policy dropped or clipped."""
    block_ids: Optional[tuple[Optional[tuple[int, ...]], ...]] = None
    """Per row, the prefix block ids the file gives (None: the row has none; the whole field
    is None when no row has any), each id covering ``block_id_tokens`` tokens."""
    block_id_tokens: int = CACHE_BLOCK_TOKENS
    """Tokens one entry of ``block_ids`` covers (512 for Mooncake, 16 for CSV)."""
    ids_cover_output: bool = True
    """Whether ``block_ids`` may name output tokens too (CSV) or only the prompt (Mooncake,
    whose last id names a partly filled 512-token block: its remaining keys would otherwise
    claim equal outputs)."""

    def rows(self, keep: "slice | np.ndarray") -> "Trace":
        """The rows selected by ``keep`` (a slice, a boolean mask or row indices), every column alike."""
        ids = self.block_ids
        if ids is not None:
            picked = np.arange(len(ids))[keep]
            ids = tuple(ids[i] for i in picked)
        return replace(
            self,
            arrived_at=None if self.arrived_at is None else self.arrived_at[keep],
            num_prefill_tokens=self.num_prefill_tokens[keep],
            num_decode_tokens=self.num_decode_tokens[keep],
            line_numbers=self.line_numbers[keep],
            block_ids=ids,
        )

    def block_hashes(self, prefill: np.ndarray, decode: np.ndarray) -> Optional[list[Optional[tuple[int, ...]]]]:
        """16-token block keys of the first ``len(prefill)`` rows, each cut to the row's full
        blocks (of its prompt + output, or of its prompt alone when the ids cover only the
        prompt), after any scaling or cut."""
        if self.block_ids is None:
            return None
        known = prefill + decode if self.ids_cover_output else prefill
        return [
            None if ids is None else expand_block_ids(ids, self.block_id_tokens, int(tokens) // CACHE_BLOCK_TOKENS)
            for ids, tokens in zip(self.block_ids, known)
        ]

    def __len__(self) -> int:
        return len(self.num_prefill_tokens)


# ----------------------------------------------------------------------------------------------
# Public entry points


def expand_block_ids(ids: tuple[int, ...], id_tokens: int, limit: int) -> tuple[int, ...]:
    """The 16-token block keys of block ids that each cover ``id_tokens`` tokens, at most
    ``limit`` of them: id ``h`` becomes ``h * m + j`` for ``j < m = id_tokens // 16``, so equal
    ids give equal keys and different ids never share one."""
    per_id = id_tokens // CACHE_BLOCK_TOKENS
    if per_id == 1:
        return tuple(ids[:limit])
    count = min(limit, per_id * len(ids))
    return tuple(ids[i // per_id] * per_id + i % per_id for i in range(count))


def trace_path(name: PathLike) -> str:
    """The file ``name`` refers to: an existing file of that name, else the shipped trace of
    that name (:data:`SAMPLE_TRACES`), else ``name`` unchanged (so a missing file is reported
    under the name the user gave)."""
    if os.path.exists(name) or str(name) not in SAMPLE_TRACES:
        return str(name)
    return str(resources.files("vidur_env").joinpath("data", SAMPLE_TRACES[str(name)]))


def detect_format(path: PathLike) -> str:
    """The format of ``path`` judged by its first non-blank line (JSON object or CSV header).

    A header that has some but not all columns of a format raises naming the first missing
    column of the closest format, which is what a user who mistyped a column needs to hear.
    """
    line_no, first = _first_line(path)
    if first.lstrip().startswith("{"):
        return "mooncake"
    header = {name.strip() for name in next(csv.reader([first]))}
    needed = {fmt: [c for c in cols if c] for fmt, cols in _CSV_COLUMNS.items()}
    for fmt, cols in needed.items():
        if set(cols) <= header:
            return fmt
    closest = max(needed, key=lambda fmt: len(header.intersection(needed[fmt])))
    if header.intersection(needed[closest]):
        missing = next(c for c in needed[closest] if c not in header)
        raise TraceFormatError(
            path, line_no, missing,
            f"missing column for the {closest} format (header: {_shorten(first.strip())})",
        )
    expected = "; ".join(",".join(cols) for cols in needed.values())
    raise TraceFormatError(
        path, line_no, None,
        f"unknown trace format: header {_shorten(first.strip())!r} has none of the column sets "
        f"[{expected}] and the line is not a JSON object (Mooncake)",
    )


def read_trace(path: PathLike, fmt: str = AUTO_FORMAT, zero_tokens: str = ZERO_TOKEN_POLICIES[0]) -> Trace:
    """Read a trace file of format ``fmt`` (see module docstring) into a :class:`Trace`.

    :param path: the trace file, or the name of a shipped trace (:func:`trace_path`).
    :param fmt: one of :data:`FORMAT_CHOICES`.
    :param zero_tokens: one of :data:`ZERO_TOKEN_POLICIES`; how rows with 0 prompt or output
        tokens are handled (``WorkloadConfig.trace_zero_tokens``, ``--trace-zero-tokens``). Negative counts, non-integers and decreasing times always raise.
    """
    if fmt not in FORMAT_CHOICES:
        raise ConfigError(f"trace format must be one of {FORMAT_CHOICES}, got {fmt!r}")
    if zero_tokens not in ZERO_TOKEN_POLICIES:
        raise ConfigError(f"zero_tokens must be one of {ZERO_TOKEN_POLICIES}, got {zero_tokens!r}")
    path = trace_path(path)
    if fmt == AUTO_FORMAT:
        fmt = detect_format(path)
    return _build_trace(path, fmt, _read_columns(path, fmt), zero_tokens)


# ----------------------------------------------------------------------------------------------
# Columns: each reader returns (line numbers, times or None, prompt, output) as arrays; token
# columns are float64 here and become int64 once they are checked to be whole numbers.

_Columns = tuple[np.ndarray, Optional[np.ndarray], np.ndarray, np.ndarray, Optional[tuple]]
"""(lines, times or None, prompt, output, per-row block ids or None)."""


def _read_columns(path: PathLike, fmt: str) -> _Columns:
    """The file's rows as column arrays; a UTF-8 decoding failure becomes a TraceFormatError."""
    try:
        return _read_jsonl(path) if fmt == "mooncake" else _read_csv(path, fmt)
    except UnicodeDecodeError:
        raise _not_utf8(path) from None


def _read_csv(path: PathLike, fmt: str) -> _Columns:
    """Columns of a CSV trace. Parsing is vectorised; a bad cell is then located row by row."""
    time_col, prompt_col, output_col = _CSV_COLUMNS[fmt]
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header, header_line = _csv_header(path, reader)
        index = _column_index(path, header, header_line, _CSV_COLUMNS[fmt])
        records, lines = [], []
        for row in reader:
            if any(cell.strip() for cell in row):
                records.append(row)
                lines.append(reader.line_num)
    if not records:
        raise TraceFormatError(path, header_line + 1, None, "no data rows after the header")
    line_numbers = np.asarray(lines, dtype=np.int64)

    def column(col: str) -> list[str]:
        return _csv_column(path, records, line_numbers, index[col], col)

    if time_col is None:
        times = None
    elif fmt == "azure":
        times = _azure_seconds(path, time_col, column(time_col), line_numbers)
    else:
        times = _float_column(path, time_col, column(time_col), line_numbers)
    prompt = _float_column(path, prompt_col, column(prompt_col), line_numbers)
    output = _float_column(path, output_col, column(output_col), line_numbers)
    ids = None
    if HASH_COLUMN in index:
        k = index[HASH_COLUMN]
        cells = [row[k] if k < len(row) else "" for row in records]
        ids = tuple(_csv_block_ids(path, int(n), cell) for n, cell in zip(line_numbers, cells))
    return line_numbers, times, prompt, output, ids


def _csv_block_ids(path: PathLike, line: int, cell: str) -> Optional[tuple[int, ...]]:
    """A ``block_hashes`` cell: space-separated integers >= 0, or blank for none."""
    words = cell.split()
    if not words:
        return None
    try:
        ids = tuple(int(word) for word in words)
    except ValueError:
        bad = next(w for w in words if not w.lstrip("+").isdigit())
        problem = f"expected space-separated integers >= 0, got {bad!r}"
        raise TraceFormatError(path, line, HASH_COLUMN, problem) from None
    if min(ids) < 0:
        raise TraceFormatError(path, line, HASH_COLUMN, f"keys must be >= 0, got {min(ids)}")
    return ids


def _csv_header(path: PathLike, reader) -> tuple[list[str], int]:
    """The first non-blank CSV record and its line number; an empty file raises."""
    for row in reader:
        if any(cell.strip() for cell in row):
            return row, reader.line_num
    raise TraceFormatError(path, 1, None, "file is empty")


def _column_index(path: PathLike, header: list[str], line: int, columns) -> dict[str, int]:
    """Position of each needed column in the header; a missing one raises naming it."""
    index = {name.strip(): i for i, name in enumerate(header)}
    for col in columns:
        if col and col not in index:
            problem = f"missing column (header: {_shorten(','.join(header))})"
            raise TraceFormatError(path, line, col, problem)
    return index


def _csv_column(path: PathLike, records: list, lines: np.ndarray, i: int, col: str) -> list[str]:
    """Cell ``i`` of every record; a short row or blank cell raises naming line and column."""
    try:
        texts = [row[i] for row in records]
    except IndexError:
        texts = []
    if len(texts) < len(records) or not all(t.strip() for t in texts):
        bad = next(k for k, row in enumerate(records) if i >= len(row) or not row[i].strip())
        raise TraceFormatError(path, int(lines[bad]), col, "missing value")
    return texts


def _float_column(path: PathLike, col: str, texts: list[str], lines: np.ndarray) -> np.ndarray:
    """CSV cells as finite float64; the first unparsable or infinite cell raises."""
    try:
        values = np.asarray(texts, dtype=np.float64)
    except ValueError:  # slow path: parse cell by cell to name the first bad one
        values = np.asarray([_number(path, int(n), col, t) for n, t in zip(lines, texts)])
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        k = bad[0]
        problem = f"expected a finite number, got {texts[k]!r}"
        raise TraceFormatError(path, int(lines[k]), col, problem)
    return values


def _read_jsonl(path: PathLike) -> _Columns:
    """Columns of a Mooncake JSONL trace (one JSON object per line, timestamps in ms)."""
    lines, values, ids = [], [], []
    with open(path, encoding="utf-8-sig") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            record = _json_object(path, line, text)
            lines.append(line)
            values.append([_json_number(path, line, key, record) for key in _MOONCAKE_KEYS])
            ids.append(_json_block_ids(path, line, record))
    if not values:
        raise TraceFormatError(path, 1, None, "file is empty")
    table = np.asarray(values, dtype=np.float64)
    block_ids = tuple(ids) if any(i is not None for i in ids) else None
    return np.asarray(lines, dtype=np.int64), table[:, 0] / 1000.0, table[:, 1], table[:, 2], block_ids


def _json_block_ids(path: PathLike, line: int, record: dict) -> Optional[tuple[int, ...]]:
    """``hash_ids`` of a Mooncake record: a list of integers >= 0 (absent or empty: None)."""
    value = record.get(MOONCAKE_HASH_KEY)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        problem = f"expected a list of integers >= 0, got {_shorten(repr(value))}"
        raise TraceFormatError(path, line, MOONCAKE_HASH_KEY, problem)
    return tuple(value) or None


def _json_object(path: PathLike, line: int, text: str) -> dict:
    """One JSONL line as a dict; invalid JSON or a non-object raises with the line."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        problem = f"invalid JSON ({err.msg} at column {err.pos + 1})"
        raise TraceFormatError(path, line, None, problem) from None
    if not isinstance(record, dict):
        problem = f"expected a JSON object, got {type(record).__name__}"
        raise TraceFormatError(path, line, None, problem)
    return record


def _json_number(path: PathLike, line: int, key: str, record: dict) -> float:
    """``record[key]`` as a finite number; a missing key or a non-number raises."""
    if key not in record:
        raise TraceFormatError(path, line, key, "missing key")
    return _number(path, line, key, record[key])


def _number(path: PathLike, line: int, field: str, value: object) -> float:
    """A finite float from CSV text or a JSON number (JSON booleans and strings are rejected)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TraceFormatError(path, line, field, f"expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise TraceFormatError(path, line, field, f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise TraceFormatError(path, line, field, f"expected a finite number, got {value!r}")
    return number


def _azure_seconds(path: PathLike, col: str, texts: list[str], lines: np.ndarray) -> np.ndarray:
    """Azure datetime text as float64 seconds after the first row (see ``_AZURE_TIMESTAMP``).

    The pattern is checked cell by cell first because NumPy's parser is lenient (it reads a
    bare date or a blank as valid), then NumPy converts the whole column at once.
    """
    for k, text in enumerate(texts):
        if not _AZURE_TIMESTAMP.match(text.strip()):
            raise TraceFormatError(
                path, int(lines[k]), col,
                f"expected a time like '2023-11-16 18:15:46.6805900', got {text!r}",
            )
    try:
        stamps = np.asarray([t.strip() for t in texts], dtype="datetime64[ns]")
    except ValueError:  # e.g. month 13: the pattern matched but the date does not exist
        stamps = np.asarray([_datetime(path, int(n), col, t) for n, t in zip(lines, texts)])
    return (stamps - stamps[0]).astype(np.int64) / 1e9


def _datetime(path: PathLike, line: int, col: str, text: str) -> np.datetime64:
    """One date/time cell at nanosecond resolution; an impossible date raises."""
    try:
        return np.datetime64(text.strip(), "ns")
    except ValueError:
        raise TraceFormatError(path, line, col, f"not a valid date/time: {text!r}") from None


# ----------------------------------------------------------------------------------------------
# Assembling and checking


def _build_trace(path: PathLike, fmt: str, columns: _Columns, zero_tokens: str) -> Trace:
    """A Trace from raw columns, after the whole-trace checks (tokens, time order, zeros)."""
    lines, times, prompt, output, block_ids = columns
    prompt_field, output_field = _token_fields(fmt)
    if times is not None:
        _check_times(path, fmt, times, lines)
    id_tokens = MOONCAKE_BLOCK_TOKENS if fmt == "mooncake" else CACHE_BLOCK_TOKENS
    trace = Trace(
        str(path),
        fmt,
        times,
        _token_column(path, prompt_field, prompt, lines),
        _token_column(path, output_field, output, lines),
        lines,
        block_ids=block_ids,
        block_id_tokens=id_tokens,
        ids_cover_output=fmt != "mooncake",
    )
    if block_ids is not None and fmt != "mooncake":
        _check_key_counts(trace)
    return _apply_zero_policy(trace, zero_tokens)


def _check_key_counts(trace: Trace) -> None:
    """A CSV row may name at most one key per full 16-token block of its prompt + output."""
    for ids, prompt, output, line in zip(trace.block_ids, trace.num_prefill_tokens, trace.num_decode_tokens,
                                         trace.line_numbers):
        blocks = int(prompt + output) // CACHE_BLOCK_TOKENS
        if ids is not None and len(ids) > blocks:
            raise TraceFormatError(
                trace.path, int(line), HASH_COLUMN,
                f"{len(ids)} keys but the row's {int(prompt + output)} tokens fill only {blocks} full "
                f"{CACHE_BLOCK_TOKENS}-token blocks",
            )


def _token_column(path: PathLike, field: str, values: np.ndarray, lines: np.ndarray) -> np.ndarray:
    """Token counts as int64; the first fractional or negative count raises."""
    fractional = np.flatnonzero(values != np.floor(values))
    if len(fractional):
        k = fractional[0]
        raise TraceFormatError(
            path, int(lines[k]), field, f"token count must be an integer, got {values[k]:g}"
        )
    negative = np.flatnonzero(values < 0)
    if len(negative):
        k = negative[0]
        problem = f"token count must be >= 0, got {values[k]:g}"
        raise TraceFormatError(path, int(lines[k]), field, problem)
    return values.astype(np.int64)


def _apply_zero_policy(trace: Trace, zero_tokens: str) -> Trace:
    """Raise for, drop or clip rows with a 0 token count, recording how many there were."""
    zero = (trace.num_prefill_tokens == 0) | (trace.num_decode_tokens == 0)
    num_zero = int(zero.sum())
    if num_zero == 0:
        return trace
    if zero_tokens == "error":
        _raise_first_zero(trace, int(np.flatnonzero(zero)[0]))
    if zero_tokens == "clip":
        return replace(
            trace,
            num_prefill_tokens=np.maximum(trace.num_prefill_tokens, 1),
            num_decode_tokens=np.maximum(trace.num_decode_tokens, 1),
            num_zero_rows=num_zero,
        )
    if num_zero == len(trace):
        first = int(trace.line_numbers[0])
        raise TraceFormatError(trace.path, first, None, "every row has 0 tokens")
    return replace(trace.rows(~zero), num_zero_rows=num_zero)


def _raise_first_zero(trace: Trace, i: int) -> None:
    """Raise for row ``i`` (which has a 0 token count), naming its column."""
    prompt_field, output_field = _token_fields(trace.format)
    field = prompt_field if trace.num_prefill_tokens[i] == 0 else output_field
    raise TraceFormatError(
        trace.path, int(trace.line_numbers[i]), field,
        f"token count is 0 (requests need >= 1 prompt and output token; to accept such rows, "
        f"drop them with {setting('trace_zero_tokens', 'drop')} or raise them to 1 token with "
        f"{setting('trace_zero_tokens', 'clip')})",
    )


def _check_times(path: PathLike, fmt: str, times: np.ndarray, lines: np.ndarray) -> None:
    """Times must be >= 0 and must not decrease: requests are replayed in file order."""
    field = _time_field(fmt)
    negative = np.flatnonzero(times < 0)
    if len(negative):
        k = negative[0]
        raise TraceFormatError(path, int(lines[k]), field, f"time must be >= 0, got {times[k]:g}")
    back = np.flatnonzero(np.diff(times) < 0)
    if len(back):
        k = back[0] + 1
        raise TraceFormatError(
            path, int(lines[k]), field,
            f"time goes backwards ({times[k]:.6f} s after {times[k - 1]:.6f} s on line "
            f"{int(lines[k - 1])}); sort the trace by time",
        )


def _shorten(text: str, limit: int = 120) -> str:
    """``text`` cut to ``limit`` characters for an error message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _time_field(fmt: str) -> str:
    """Name of the time column/key of a format."""
    return "timestamp" if fmt == "mooncake" else _CSV_COLUMNS[fmt][0]


def _token_fields(fmt: str) -> tuple[str, str]:
    """Names of the (prompt, output) columns/keys of a format."""
    return _MOONCAKE_KEYS[1:] if fmt == "mooncake" else _CSV_COLUMNS[fmt][1:]


def _first_line(path: PathLike) -> tuple[int, str]:
    """(1-based number, text) of the first non-blank line; an empty file raises."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            for line_no, text in enumerate(f, start=1):
                if text.strip():
                    return line_no, text
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    raise TraceFormatError(path, 1, None, "file is empty")


def _not_utf8(path: PathLike) -> TraceFormatError:
    """The error for a file that is not UTF-8 text, naming its first undecodable line."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return TraceFormatError(path, line_no, None, f"not UTF-8 text ({err.reason})")
    return TraceFormatError(path, 1, None, "not UTF-8 text")
