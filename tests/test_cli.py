"""The ``python -m vidur_env simulate`` contract: JSON metrics out, clear errors with exit 2."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from vidur_env.cli import main
from vidur_env.metrics import VIDUR_CSV_COLUMNS

SMALL = ["simulate", "--replicas", "2", "--num-requests", "40"]


def run_cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_simulate_prints_vidur_named_metrics_and_writes_outputs(tmp_path, capsys):
    out_json, out_csv = tmp_path / "m.json", tmp_path / "r.csv"
    code, out, _ = run_cli(SMALL + ["--output-json", str(out_json), "--output-csv", str(out_csv)], capsys)
    assert code == 0
    printed = json.loads(out)
    assert printed["num_requests"] == 40
    assert printed["prefill_e2e_time"]["p99"] >= printed["prefill_e2e_time"]["p50"] > 0
    assert json.loads(out_json.read_text()) == printed
    with open(out_csv) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 40 and tuple(rows[0]) == tuple(VIDUR_CSV_COLUMNS)


def test_same_seed_same_output(capsys):
    first = run_cli(SMALL + ["--seed", "3", "--router", "random"], capsys)[1]
    second = run_cli(SMALL + ["--seed", "3", "--router", "random"], capsys)[1]
    assert first == second


def test_trace_replay_from_a_vidur_csv(tmp_path, capsys):
    trace = tmp_path / "t.csv"
    trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,100,5\n0.5,200,10\n1.0,50,3\n")
    code, out, _ = run_cli(["simulate", "--replicas", "1", "--trace", str(trace), "--num-requests", "3"], capsys)
    assert code == 0
    assert json.loads(out)["num_requests"] == 3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--trace", "/no/such/trace.csv"], "/no/such/trace.csv"),
        (["--model", "gpt-17"], "gpt-17"),
        (["--num-requests", "0"], "num_requests"),
        (["--profiling-dir", "/no/such/dir"], "/no/such/dir"),
    ],
)
def test_bad_inputs_exit_2_with_a_message_naming_them(argv, message, capsys):
    code, _, err = run_cli(SMALL + argv, capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_malformed_trace_names_file_line_and_field(tmp_path, capsys):
    trace = tmp_path / "bad.csv"
    trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,100,5\n0.5,abc,10\n")
    code, _, err = run_cli(["simulate", "--trace", str(trace)], capsys)
    assert code == 2
    assert "bad.csv" in err and ":3" in err and "num_prefill_tokens" in err


def test_unknown_flag_is_an_argparse_error_with_exit_2():
    result = subprocess.run([sys.executable, "-m", "vidur_env", "simulate", "--replicaz", "2"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "--replicaz" in result.stderr


def test_heterogeneous_cluster_from_a_replica_list(tmp_path, capsys):
    spec = tmp_path / "cluster.json"
    spec.write_text(json.dumps([
        {"model": "llama-2-7b", "device": "h100"},
        {"model": "llama-2-7b", "device": "a100"},
        {"model": "llama-3-8b", "device": "a100", "scheduler": "vllm"},
    ]))
    code, out, _ = run_cli(["simulate", "--replica-config", str(spec), "--num-requests", "60"], capsys)
    assert code == 0
    replicas = json.loads(out)["replicas"]
    assert len(replicas) == 3 and sum(r["num_requests"] for r in replicas) == 60


@pytest.mark.parametrize(
    "content, message",
    [
        ('[{"model": "llama-2-7b", "tensor_paralel": 2}]', "tensor_paralel"),
        ('[{"tensor_parallel": "2"}]', "replicas[0].tensor_parallel"),
        ('[{"model": "llama-2-7b",}\n]', ":1: invalid JSON"),
        ("[]", "non-empty"),
    ],
)
def test_bad_replica_list_names_file_and_key(tmp_path, capsys, content, message):
    spec = tmp_path / "cluster.json"
    spec.write_text(content)
    code, _, err = run_cli(["simulate", "--replica-config", str(spec)], capsys)
    assert code == 2
    assert "cluster.json" in err and message in err
