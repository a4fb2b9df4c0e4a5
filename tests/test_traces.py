"""Trace readers: each format on small hand-written files, auto-detection, and errors that
name the file, the line and the field for every kind of malformed trace."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from vidur_env.traces import TraceFormatError, detect_format, read_trace, trace_path

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]


def fixture(name: str) -> Path:
    return FIXTURES / name


# ----------------------------------------------------------------------------------------------
# Well-formed traces


def test_vidur_replay_csv():
    trace = read_trace(fixture("vidur_replay.csv"), "vidur")
    assert trace.format == "vidur"
    np.testing.assert_array_equal(trace.arrived_at, [0.0, 0.5, 1.25, 1.25, 3.0])
    np.testing.assert_array_equal(trace.num_prefill_tokens, [375, 4000, 1020, 7, 2048])
    np.testing.assert_array_equal(trace.num_decode_tokens, [45, 200, 129, 1, 512])
    np.testing.assert_array_equal(trace.line_numbers, [2, 3, 4, 5, 6])
    assert trace.arrived_at.dtype == np.float64
    assert trace.num_prefill_tokens.dtype == np.int64 and trace.num_decode_tokens.dtype == np.int64
    assert len(trace) == 5 and trace.num_zero_rows == 0


def test_vidur_lengths_csv_ignores_extra_columns():
    trace = read_trace(fixture("vidur_lengths.csv"), "vidur_lengths")
    assert trace.arrived_at is None
    np.testing.assert_array_equal(trace.num_prefill_tokens, [3772, 2015, 5000, 12])
    np.testing.assert_array_equal(trace.num_decode_tokens, [54, 156, 100, 3])


def test_vidur_replay_csv_read_as_lengths_only():
    trace = read_trace(fixture("vidur_replay.csv"), "vidur_lengths")
    assert trace.arrived_at is None and len(trace) == 5


def test_azure_csv_seconds_after_first_row_with_seven_fractional_digits():
    trace = read_trace(fixture("azure_conv.csv"), "azure")
    expected = [0.0, 0.3194101, 13.81941, 20653.3194099, 20653.31941]
    np.testing.assert_allclose(trace.arrived_at, expected, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(trace.num_prefill_tokens, [374, 396, 1020, 2048, 100])
    np.testing.assert_array_equal(trace.num_decode_tokens, [44, 109, 129, 512, 10])


def test_mooncake_jsonl_milliseconds_and_blank_lines():
    trace = read_trace(fixture("mooncake.jsonl"), "mooncake")
    np.testing.assert_allclose(trace.arrived_at, [0.0, 27.482, 30.535])
    np.testing.assert_array_equal(trace.num_prefill_tokens, [6955, 6472, 6478])
    np.testing.assert_array_equal(trace.num_decode_tokens, [52, 26, 192])
    np.testing.assert_array_equal(trace.line_numbers, [1, 2, 4])


@pytest.mark.parametrize(
    "name, fmt",
    [
        ("vidur_replay.csv", "vidur"),
        ("vidur_lengths.csv", "vidur_lengths"),
        ("azure_conv.csv", "azure"),
        ("mooncake.jsonl", "mooncake"),
    ],
)
def test_auto_detection(name, fmt):
    assert detect_format(fixture(name)) == fmt
    assert read_trace(fixture(name)).format == fmt


def test_byte_order_mark_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfarrived_at,num_prefill_tokens,num_decode_tokens\r\n0.0,10,5\r\n1.5,20,6\r\n")
    trace = read_trace(path)
    assert trace.format == "vidur"
    np.testing.assert_array_equal(trace.arrived_at, [0.0, 1.5])


def test_integral_float_token_counts_are_accepted(tmp_path):
    path = tmp_path / "floats.csv"
    path.write_text("num_prefill_tokens,num_decode_tokens\n12.0,3.0\n")
    np.testing.assert_array_equal(read_trace(path).num_prefill_tokens, [12])


# ----------------------------------------------------------------------------------------------
# Zero-token rows: an explicit policy, never silent


def test_zero_tokens_raise_by_default():
    with pytest.raises(TraceFormatError, match=r"zero_tokens\.csv:3: num_decode_tokens: token count is 0"):
        read_trace(fixture("zero_tokens.csv"))


def test_zero_tokens_drop_reports_the_count():
    trace = read_trace(fixture("zero_tokens.csv"), zero_tokens="drop")
    assert trace.num_zero_rows == 1
    np.testing.assert_array_equal(trace.num_prefill_tokens, [10, 30])
    np.testing.assert_array_equal(trace.arrived_at, [0.0, 1.0])
    np.testing.assert_array_equal(trace.line_numbers, [2, 4])


def test_zero_tokens_clip_raises_to_one_token():
    trace = read_trace(fixture("zero_tokens.csv"), zero_tokens="clip")
    assert trace.num_zero_rows == 1
    np.testing.assert_array_equal(trace.num_decode_tokens, [5, 1, 7])


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="trace format"):
        read_trace(fixture("vidur_replay.csv"), "parquet")
    with pytest.raises(ValueError, match="zero_tokens"):
        read_trace(fixture("vidur_replay.csv"), zero_tokens="ignore")


# ----------------------------------------------------------------------------------------------
# Malformed traces: file, 1-based line and field in the message

MALFORMED = [
    # (file, format, line, field or None, words in the problem)
    ("bad_missing_column.csv", "auto", 1, "num_decode_tokens", "missing column"),
    ("bad_missing_column.csv", "vidur", 1, "num_decode_tokens", "missing column"),
    ("bad_non_numeric.csv", "auto", 4, "num_prefill_tokens", "expected a number"),
    ("bad_negative_tokens.csv", "auto", 3, "num_decode_tokens", ">= 0"),
    ("bad_fractional_tokens.csv", "auto", 2, "num_prefill_tokens", "integer"),
    ("bad_time_backwards.csv", "auto", 4, "arrived_at", "backwards"),
    ("bad_negative_time.csv", "auto", 2, "arrived_at", ">= 0"),
    ("bad_nan_time.csv", "auto", 3, "arrived_at", "finite"),
    ("bad_missing_value.csv", "auto", 4, "num_decode_tokens", "missing value"),
    ("bad_blank_cell.csv", "auto", 3, "num_prefill_tokens", "missing value"),
    ("empty.csv", "auto", 1, None, "empty"),
    ("empty.csv", "vidur", 1, None, "empty"),
    ("header_only.csv", "auto", 2, None, "no data rows"),
    ("bad_json.jsonl", "auto", 2, None, "invalid JSON"),
    ("bad_mooncake_missing_key.jsonl", "auto", 3, "output_length", "missing key"),
    ("bad_mooncake_type.jsonl", "auto", 1, "input_length", "expected a number"),
    ("bad_azure_timestamp.csv", "auto", 3, "TIMESTAMP", "expected a time"),
    ("bad_azure_date.csv", "auto", 3, "TIMESTAMP", "not a valid date"),
    ("unknown_format.csv", "auto", 1, None, "unknown trace format"),
    ("not_utf8.csv", "auto", 3, None, "not UTF-8"),
    ("vidur_lengths.csv", "vidur", 1, "arrived_at", "missing column"),
    ("mooncake.jsonl", "azure", 1, "TIMESTAMP", "missing column"),
]


@pytest.mark.parametrize("name, fmt, line, field, words", MALFORMED)
def test_malformed_trace_names_file_line_and_field(name, fmt, line, field, words):
    with pytest.raises(TraceFormatError) as info:
        read_trace(fixture(name), fmt)
    err = info.value
    message = str(err)
    assert name in message and f":{line}:" in message and words in message
    assert (err.line, err.field) == (line, field)
    if field:
        assert f": {field}: " in message


# ----------------------------------------------------------------------------------------------
# The real traces (../shared/data): read whole, figures as documented in CALIBRATION.md


@pytest.mark.needs_shared_data
def test_real_conversation_trace(shared_data):
    trace = read_trace(shared_data / "processed_traces" / "splitwise_conv.csv")
    assert trace.format == "vidur" and len(trace) == 19366
    assert trace.num_prefill_tokens.mean() == pytest.approx(1155, abs=1)
    assert np.median(trace.num_prefill_tokens) == 1020
    assert trace.num_decode_tokens.mean() == pytest.approx(211, abs=1)
    assert np.median(trace.num_decode_tokens) == 129
    gaps = np.diff(trace.arrived_at)
    assert gaps.std() / gaps.mean() == pytest.approx(1.1, abs=0.02)


@pytest.mark.needs_shared_data
def test_real_arxiv_lengths_trace(shared_data):
    path = shared_data / "processed_traces" / "arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv"
    trace = read_trace(path)
    assert trace.format == "vidur_lengths" and trace.arrived_at is None
    assert trace.num_prefill_tokens.mean() == pytest.approx(2588, abs=1)
    assert trace.num_decode_tokens.mean() == pytest.approx(291, abs=1)


# ----------------------------------------------------------------------------------------------
# The sample trace shipped with the package (issue 9, point 13)


def test_sample_trace_is_a_vidur_replay_trace_shipped_as_package_data():
    trace = read_trace("sample")
    assert trace.format == "vidur" and len(trace) == 300
    assert trace.arrived_at[0] == 0.0 and (np.diff(trace.arrived_at) >= 0).all()
    assert (trace.num_prefill_tokens >= 1).all() and (trace.num_decode_tokens >= 1).all()
    assert Path(trace_path("sample")).parent.name == "data"


def test_sample_trace_is_what_the_generating_script_writes(tmp_path):
    spec = importlib.util.spec_from_file_location("make_sample_trace", REPO / "benchmarks" / "make_sample_trace.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "sample.csv"
    script.write_trace(out, *script.sample_trace(300, 2026))
    assert out.read_bytes() == Path(trace_path("sample")).read_bytes()


def test_an_existing_file_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sample").write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,5,5\n")
    assert len(read_trace("sample")) == 1


def test_zero_token_advice_names_the_python_setting():
    with pytest.raises(TraceFormatError, match="trace_zero_tokens='drop'"):
        read_trace(fixture("zero_tokens.csv"))
