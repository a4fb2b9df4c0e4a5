"""The scenario suite: flags and errors, the report's verdicts, and one tiny run end to end."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from sb3_klppo import suite as suite_module
from sb3_klppo.cli import build_parser, main
from sb3_klppo.suite import SuiteArgs, heuristics_for, replay_kwargs
from sb3_klppo.suite_report import FIGURES, verdict
from vidur_env.config_flags import field_docs
from vidur_env.routers import load_only_routers
from vidur_env.scenarios import registered_scenario
from vidur_env.simulation import cluster_capacity
from vidur_env.traces import read_trace

CONFIGS = Path(__file__).parent.parent / "configs"
LENGTHS_ONLY = Path(__file__).parent / "fixtures" / "vidur_lengths.csv"
REPLAY = Path(__file__).parent / "fixtures" / "vidur_replay.csv"
TINY = ["--set", "ppo.total_timesteps=128", "--set", "ppo.n_envs=2", "--set", "ppo.n_steps=32",
        "--set", "ppo.batch_size=32", "--set", "ppo.n_epochs=1", "--set", "warm_start.n_samples=64",
        "--set", "warm_start.bc_epochs=1", "--set", "monitoring.tensorboard=false",
        "--episodes", "2", "--teacher-episodes", "1", "--episode-requests", "24"]


@pytest.mark.parametrize("flags, message", [
    (["--scenarios", "nope"], "--scenarios: scenario: unknown name 'nope'"),
    (["--seeds", "0"], "--seeds: must be at least 1"),
    (["--episodes", "1"], "--episodes: must be at least 2"),
    (["--set", "ppo.gamma"], "--set 'ppo.gamma': expected KEY=VALUE"),
    (["--set", "ppo.nope=1"], "unknown config key 'ppo.nope'"),
    (["--replay", "missing.csv"], "--replay: no trace file at missing.csv"),
    (["--replay", str(LENGTHS_ONLY)], "has no arrival times"),
    (["--replay", str(REPLAY), "--replay-requests", "6"], "--replay-requests: 6 is more than the 5 rows of"),
    (["--env-kwargs", "{"], "--env-kwargs: not JSON"),
    (["--env-kwargs", '{"scenario": "x"}'], "--env-kwargs: expected a JSON object of env keywords other than"),
    (["--env-kwargs", '{"reward": "nope"}'], "reward: must be one of"),
    (["--set", 'env.kwargs={"scenario": "hetero"}'], "env.kwargs of the base config: the suite sets scenario"),
    (["--traffic", "[1]"], "--traffic: expected a JSON object of training-distribution ranges"),
    (["--traffic", '{"cvs": [1, 2]}'], "--traffic: unknown key(s) cvs"),
    (["--traffic", '{"devices": ["b200"]}'], "--traffic.devices: unknown device 'b200'"),
    (["--scenarios", "prefix", "--traffic", '{"cv": [1, 2]}'], "traffic.cv: only Poisson or Gamma"),
])
def test_bad_suite_flags_exit_2_with_one_line(tmp_path, capsys, flags, message):
    assert main(["suite", "--output-dir", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "suite.json").exists()


def test_the_config_env_keywords_reach_every_scenario_under_the_flag_ones():
    args = build_parser().parse_args(["suite", "--config", str(CONFIGS / "ppo_ttft.json"),
                                      "--env-kwargs", '{"ttft_weight": 3}'])
    settings = suite_module.settings_from_args(args)
    for training in (True, False):
        kwargs = settings.env_kwargs("hetero", training)
        assert kwargs["reward"] == "latency_ttft" and kwargs["ttft_weight"] == 3 and kwargs["scenario"] == "hetero"


def test_traffic_ranges_replace_the_scenario_s_own_in_training_only():
    args = build_parser().parse_args(["suite", "--scenarios", "hetero,prefix",
                                      "--traffic", '{"devices": ["a100", "h100"]}'])
    settings = suite_module.settings_from_args(args)
    own = registered_scenario("hetero").traffic.as_dict()
    assert settings.env_kwargs("hetero", training=True)["traffic"] == {**own, "devices": ["a100", "h100"]}
    assert "traffic" not in settings.env_kwargs("hetero", training=False)
    assert settings.env_kwargs("prefix", training=True)["traffic"]["keyed"] == [0.0, 1.0]


def test_cache_aware_routers_join_only_where_requests_share_prefixes_and_observations_are_fresh():
    assert heuristics_for("default") == load_only_routers() == heuristics_for("stale1000")
    prefix = heuristics_for("prefix")
    assert set(load_only_routers()) < set(prefix) and "dynamo_kv" in prefix and "consistent_hash" in prefix


def fake_result(trained_pct: dict[str, tuple[float, float]]) -> dict:
    """A scenario result whose trained-vs-best differences are the given (mean, half width) pairs."""
    best = {f: "lwl" for f in FIGURES}
    paired = {row: {"lwl": {f: {"mean_pct": m, "half_width_pct": h,
                                "verdict": "better" if m + h < 0 else "worse" if m - h > 0 else "tie"}
                            for f, (m, h) in trained_pct.items()}} for row in ("trained", "trained_sampled")}
    return {"best_heuristic": best, "paired": paired}


@pytest.mark.parametrize("diffs, expected", [
    ({"e2e_mean": (0.5, 1), "e2e_p99": (-1, 2), "ttft_mean": (-12, 3), "ttft_p99": (-8, 9)}, "win (TTFT mean)"),
    ({"e2e_mean": (0.5, 1), "e2e_p99": (-1, 2), "ttft_mean": (-12, 13), "ttft_p99": (-8, 9)}, "no 10% win"),
    ({"e2e_mean": (2.5, 1), "e2e_p99": (-1, 2), "ttft_mean": (-12, 3), "ttft_p99": (-8, 9)}, "worse by more than 2%"),
])
def test_a_win_needs_ten_percent_with_the_interval_off_zero_and_nothing_two_percent_worse(diffs, expected):
    assert verdict(fake_result(diffs)).startswith(expected)


def test_a_replay_runs_at_the_asked_fraction_of_capacity():
    trace = "sample"
    kwargs = replay_kwargs("hetero", trace, 0.8, 20)
    rows = read_trace(trace)
    rate = (len(rows) - 1) / float(rows.arrived_at[-1] - rows.arrived_at[0])
    workload = kwargs["workload"]
    capacity = cluster_capacity(kwargs["cluster"], workload)
    assert rate / workload.time_scale == pytest.approx(0.8 * capacity)
    assert workload.trace_offset == "random" and kwargs["num_requests"] == 20


def test_a_tiny_suite_writes_its_tables_and_resumes_without_retraining(tmp_path, capsys, monkeypatch):
    out = tmp_path / "suite"
    assert main(["suite", "--scenarios", "hetero", "--seeds", "2", "--output-dir", str(out), *TINY]) == 0, \
        capsys.readouterr().err
    data = json.loads((out / "suite.json").read_text())
    result = data["scenarios"]["hetero"]
    policies = result["policies"]
    assert {"trained", "trained_sampled", "lower_bound", *load_only_routers()} == set(policies)
    assert all(set(FIGURES) <= set(row) for row in policies.values())
    assert result["teacher"] in load_only_routers() and len(result["run_dirs"]) == 2
    assert result["kept_steps"] is None  # no monitoring.keep_best: each run kept its last policy
    paired = result["paired"]["trained"]["least_work_left"]["ttft_p99"]
    assert paired["episodes"] == 2 and np.isfinite(paired["mean_pct"])
    assert all(len(result["per_seed_vs_best_pct"][f]) == 2 for f in FIGURES)
    markdown = (out / "suite.md").read_text()
    assert "| hetero |" in markdown and (out / "suite.png").stat().st_size > 0

    def no_training(*_args, **_kwargs):
        raise AssertionError("a finished scenario was trained again")
    monkeypatch.setattr(suite_module, "run_scenario", no_training)
    assert main(["suite", "--scenarios", "hetero", "--seeds", "2", "--output-dir", str(out), *TINY]) == 0
    assert json.loads((out / "suite.json").read_text())["scenarios"]["hetero"] == result

    replay = ["--replay", str(REPLAY), "--replay-requests", "4"]
    assert main(["suite", "--scenarios", "hetero", "--seeds", "2", "--output-dir", str(out), *TINY, *replay]) == 0
    resumed = json.loads((out / "suite.json").read_text())["scenarios"]["hetero"]
    assert {k: v for k, v in resumed.items() if k != "replay"} == result  # the saved models, not retrained
    assert resumed["replay"]["trace"] == str(REPLAY) and resumed["replay"]["requests"] == 4
    assert {"trained", *load_only_routers()} <= set(resumed["replay"]["policies"])
    assert "### Replay of" in (out / "suite.md").read_text()


def test_a_suite_run_that_keeps_its_best_policy_chooses_it_on_its_own_curve(tmp_path, capsys):
    out = tmp_path / "suite"
    keep = ["--set", "monitoring.keep_best=return_mean", "--set", "monitoring.curve_episodes=1"]
    assert main(["suite", "--scenarios", "default", "--seeds", "1", "--output-dir", str(out), *TINY, *keep]) == 0, \
        capsys.readouterr().err
    result = json.loads((out / "suite.json").read_text())["scenarios"]["default"]
    run_dir = Path(result["run_dirs"][0])
    curve = json.loads((run_dir / "summary.json").read_text())["learning_curve"]
    best = max(range(len(curve["points"])), key=lambda i: curve["points"][i]["return_mean"])
    assert len(curve["points"]) >= 2 and curve["kept_point"] == best
    assert f"point {best + 1} of {len(curve['points'])}" in (run_dir / "report.md").read_text()
    assert result["kept_steps"] == [int(curve["points"][best]["timesteps"])]
    assert f"after {result['kept_steps'][0]:,} training steps" in (out / "suite.md").read_text()


def test_the_same_seeds_give_the_same_suite(tmp_path, capsys):
    results = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(["suite", "--scenarios", "default", "--seeds", "1", "--output-dir", str(out), *TINY]) == 0
        results.append(json.loads((out / "suite.json").read_text())["scenarios"]["default"])
    capsys.readouterr()
    for key in ("policies", "paired", "teacher", "episodes"):
        assert results[0][key] == results[1][key], key


def test_every_suite_argument_is_a_flag_with_its_docstring_as_help(capsys):
    with pytest.raises(SystemExit):
        main(["suite", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, doc in field_docs(SuiteArgs).items():
        assert f"--{name.replace('_', '-')}" in text and doc.split(".")[0] in text


def test_seeds_trained_as_ray_tasks_give_the_suite_trained_here(tmp_path, capsys):
    """``--ray local`` hands each seed's training to a local Ray (the engine of the sweep), from
    full paths, and the runs come out as those trained in this process."""
    pytest.importorskip("ray")
    results = []
    for name, flags in (("here", []), ("ray", ["--ray", "local", "--jobs", "2"])):
        out = tmp_path / name
        assert main(["suite", "--scenarios", "default", "--seeds", "2", "--output-dir", str(out), *TINY, *flags]) == 0, \
            capsys.readouterr().err
        results.append(json.loads((out / "suite.json").read_text())["scenarios"]["default"])
    assert all(Path(d).is_absolute() and (Path(d) / "model.zip").is_file() for d in results[1]["run_dirs"])
    for key in ("policies", "paired", "teacher", "episodes"):
        assert results[0][key] == results[1][key], key


def test_ray_without_ray_installed_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes ``import ray`` fail
    assert main(["suite", "--output-dir", str(tmp_path), "--ray", "local"]) == 2
    err = capsys.readouterr().err
    assert "--ray: needs Ray: pip install 'vidur-env[sweep]'" in err and err.count("\n") == 1
