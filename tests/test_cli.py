"""The ``python -m vidur_env simulate`` contract: JSON metrics out, clear errors with exit 2."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from vidur_env.cli import main
from vidur_env.config import ClusterConfig
from vidur_env.metrics import VIDUR_CSV_COLUMNS
from vidur_env.reward import REWARDS, LatencyReward
from vidur_env.scenarios import SCENARIOS, RegisteredScenario, named_scenario
from vidur_env.simulation import Scenario, run_simulation
from vidur_env.workload import WorkloadConfig

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


# ----------------------------------------------------------------------------------------------
# Issue 9: nothing given is cut, refused or crashed on silently


def run_any(argv, capsys):
    """``run_cli``, also for argparse errors (SystemExit)."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


REPLAY_FIXTURE = str(Path(__file__).parent / "fixtures" / "vidur_replay.csv")


def test_trace_replays_every_row_by_default(capsys):
    code, out, _ = run_cli(["simulate", "--replicas", "2", "--trace", "sample"], capsys)
    assert code == 0 and json.loads(out)["num_requests"] == 300


def test_a_trace_shorter_than_the_default_request_count_works_in_simulate_and_evaluate(tmp_path, capsys):
    code, out, _ = run_cli(["simulate", "--replicas", "1", "--trace", REPLAY_FIXTURE], capsys)
    assert code == 0 and json.loads(out)["num_requests"] == 5
    code, _, err = run_cli(["evaluate", "--replicas", "2", "--trace", REPLAY_FIXTURE, "--routers", "round_robin",
                            "--episodes", "1", "--output-dir", str(tmp_path)], capsys)
    assert code == 0, err


def test_num_requests_takes_the_first_rows_and_more_than_the_trace_names_both_numbers(capsys):
    code, out, _ = run_cli(["simulate", "--replicas", "1", "--trace", REPLAY_FIXTURE, "--num-requests", "2"], capsys)
    assert code == 0 and json.loads(out)["num_requests"] == 2
    for command in ("simulate", "evaluate"):
        code, _, err = run_cli([command, "--trace", REPLAY_FIXTURE, "--num-requests", "20"], capsys)
        assert code == 2
        assert "--num-requests 20 asks for more requests" in err and "only 5 usable rows" in err
        assert "--num-requests left out" in err and "None" not in err


def test_cut_prompts_are_counted_on_stderr_and_in_the_json(capsys):
    code, out, err = run_cli(["simulate", "--replicas", "1", "--trace", REPLAY_FIXTURE], capsys)
    assert code == 0 and json.loads(out)["requests_cut_to_max_tokens"] == 1
    assert err.count("\n") == 1 and err.startswith("note: 1 of 5 trace requests had more than --max-tokens 4096")


@pytest.mark.parametrize("command", ["simulate", "evaluate"])
@pytest.mark.parametrize("argv, names", [
    (["--tp", "3"], "--tp"),
    (["--model", "llama-2-70b", "--tp", "1"], "--tp"),
    (["--max-tokens", "10000000"], "--max-tokens"),
    (["--max-tokens", "10000000", "--allow-beyond-context"], "--max-tokens"),
    (["--seed", "-1"], "--seed"),
    (["--load", "nan"], "load"),
    (["--device", "tpu"], "device"),
    (["--trace-offset", "x", "--trace", "sample"], "--trace-offset"),
])
def test_user_errors_are_one_line_naming_the_flag_with_exit_2(command, argv, names, capsys):
    code, _, err = run_any([command, "--num-requests", "8"] + argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and names in err and "Traceback" not in err


def test_max_tokens_above_the_context_length_needs_the_opt_in(capsys):
    code, _, err = run_cli(SMALL + ["--max-tokens", "8192"], capsys)
    assert code == 2 and "context length" in err and "--allow-beyond-context" in err
    code, out, _ = run_cli(SMALL + ["--max-tokens", "8192", "--allow-beyond-context"], capsys)
    assert code == 0
    code, out, _ = run_cli(SMALL + ["--model", "llama-3-8b", "--max-tokens", "8192"], capsys)
    assert code == 0


def test_an_output_path_in_a_missing_directory_fails_before_the_run(tmp_path, capsys):
    code, out, err = run_cli(SMALL + ["--output-csv", str(tmp_path / "no" / "r.csv")], capsys)
    assert code == 2 and out == "" and err.startswith("error: --output-csv: directory")


def test_an_unwritable_csv_is_a_one_line_error_naming_the_flag(tmp_path, capsys):
    """The CSV is streamed while the run goes, so it is opened first: a directory there fails
    with the flag's name and nothing on stdout."""
    code, out, err = run_cli(SMALL + ["--output-csv", str(tmp_path)], capsys)
    assert code == 2 and out == "" and err == f"error: --output-csv: cannot write {tmp_path} (Is a directory)\n"


def test_zero_episode_requests_is_an_error_not_the_default(tmp_path, capsys):
    code, _, err = run_cli(["evaluate", "--num-requests", "8", "--episode-requests", "0", "--routers", "round_robin",
                            "--episodes", "1", "--output-dir", str(tmp_path)], capsys)
    assert code == 2 and "num_requests" in err


def test_a_failed_capacity_probe_is_reported_as_such(capsys):
    code, _, err = run_cli(SMALL + ["--num-blocks", "5"], capsys)
    assert code == 2
    assert err.startswith("error: capacity measurement failed, so --load cannot be turned into an arrival rate")
    assert "--qps" in err


def test_advice_names_only_options_of_the_command_line(capsys):
    code, _, err = run_cli(["simulate", "--trace", str(Path(__file__).parent / "fixtures" / "zero_tokens.csv")], capsys)
    assert code == 2 and "--trace-zero-tokens drop" in err and "zero_tokens='drop'" not in err
    code, out, _ = run_cli(["simulate", "--replicas", "1", "--trace-zero-tokens", "drop",
                            "--trace", str(Path(__file__).parent / "fixtures" / "zero_tokens.csv")], capsys)
    assert code == 0 and json.loads(out)["num_requests"] == 2


def test_output_csv_has_vidurs_header_by_default_and_ours_on_request(tmp_path, capsys):
    vidur_csv, full_csv = tmp_path / "v.csv", tmp_path / "f.csv"
    run_cli(SMALL + ["--output-csv", str(vidur_csv)], capsys)
    run_cli(SMALL + ["--output-csv", str(full_csv), "--csv-columns", "full"], capsys)
    vidur_header = vidur_csv.read_text().splitlines()[0].split(",")
    assert vidur_header[:3] == ["Request Id", "request_e2e_time", "request_e2e_time_normalized"]
    assert "request_num_prefill_tokens" in vidur_header and "replica_id" not in vidur_header
    assert full_csv.read_text().splitlines()[0].split(",")[:2] == ["request_id", "replica_id"]


@pytest.mark.needs_shared_data
def test_vidurs_profiles_work_with_default_flags_and_strict_grid_restores_the_error(shared_data, capsys):
    argv = ["simulate", "--replicas", "2", "--trace", "sample", "--num-requests", "60",
            "--profiling-dir", str(shared_data / "profiling")]
    code, out, err = run_cli(argv, capsys)
    lookups = json.loads(out)["out_of_grid_lookups"]
    assert code == 0 and lookups > 0 and f"note: {lookups} execution-time lookups fell outside" in err
    code, _, err = run_cli(argv + ["--extrapolate"], capsys)  # deprecated alias of the default
    assert code == 0
    code, _, err = run_cli(argv + ["--strict-grid"], capsys)
    assert code == 2 and "outside the profiled range" in err and "--strict-grid left out" in err



def test_a_named_scenario_runs_with_the_flags_given_overriding_it(capsys):
    """--scenario prefix starts from the registered scenario (its model, sessions, max_tokens
    and prefix caching, which no flag set), and only the flags given change it."""
    code, out, err = run_cli(["simulate", "--scenario", "prefix", "--replicas", "2", "--num-requests", "48"], capsys)
    assert code == 0, err
    prefix = named_scenario("prefix")
    expected = replace(prefix, cluster=replace(prefix.cluster, num_replicas=2),
                       workload=replace(prefix.workload, num_requests=48))
    assert json.loads(out) == json_metrics(expected)
    code, off, err = run_cli(["simulate", "--scenario=prefix", "--replicas", "2", "--num-requests", "48",
                              "--no-prefix-caching"], capsys)
    no_cache = replace(expected, cluster=replace(expected.cluster,
                                                 replica=replace(expected.cluster.replica, prefix_caching=False)))
    assert code == 0 and json.loads(off) == json_metrics(no_cache) != json.loads(out)
    code, abbreviated, _ = run_cli(["simulate", "--scen", "prefix", "--replicas", "2", "--num-requests", "48"], capsys)
    assert code == 0 and abbreviated == out


def json_metrics(scenario):
    """What ``simulate`` prints for ``scenario`` with seed 0 and the default router."""
    return json.loads(json.dumps(run_simulation(scenario, seed=0).metrics))


def test_the_default_scenario_is_the_dataclass_defaults(capsys):
    expected = json_metrics(replace(Scenario(), workload=WorkloadConfig(num_requests=40)))
    explicit = run_cli(["simulate", "--scenario", "default", "--num-requests", "40"], capsys)[1]
    left_out = run_cli(["simulate", "--num-requests", "40"], capsys)[1]
    assert json.loads(explicit) == json.loads(left_out) == expected


@pytest.mark.parametrize("command", ["simulate", "evaluate"])
def test_an_unknown_scenario_name_lists_the_registered_ones(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--scenario", "nope"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--scenario" in err and all(name in err for name in SCENARIOS)
    assert err.count("\n") == 1


def test_choice_lists_come_from_the_registries(monkeypatch, capsys):
    """A scenario or reward added to its registry is a choice of the CLI with no other edit."""
    monkeypatch.setitem(SCENARIOS, "two_replicas", RegisteredScenario(
        "two_replicas", "two replicas", lambda: Scenario(cluster=ClusterConfig(num_replicas=2))))
    monkeypatch.setitem(REWARDS, "e2e_copy", type("CopyReward", (LatencyReward,), {"name": "e2e_copy"}))
    code, out, err = run_cli(["simulate", "--scenario", "two_replicas", "--num-requests", "16"], capsys)
    assert code == 0 and len(json.loads(out)["replicas"]) == 2, err
    for command, choice in (("simulate", "two_replicas"), ("evaluate", "two_replicas"), ("evaluate", "e2e_copy")):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert choice in capsys.readouterr().out
