"""The sweep: its statistics, its plan and errors (no Ray), the pipeline function its trials call,
and tiny sweeps on a local 2-CPU Ray."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from sb3_klppo.cli import main
from sb3_klppo.config import ConfigError, TrainConfig
from sb3_klppo.pipeline import model_metrics, override, resolve_config, run_training
from sb3_klppo.sweep import SweepArgs
from sb3_klppo.sweep_plan import METRIC_MODES, make_plan, parse_grid
from sb3_klppo.sweep_report import estimate, paired_comparison, paired_p_value, write_report
from sb3_klppo.sweep_trials import OK, trial_record, write_record
from vidur_env.config_flags import field_docs
from vidur_env.student_t import t_central_mass, t_critical

# A few hundred env steps per trial: 2 updates of 2 envs x 64 steps, a one-episode evaluation.
TINY_CONFIG = {
    "env": {"kwargs": {"num_requests": 48}},
    "ppo": {"total_timesteps": 256, "n_envs": 2, "n_steps": 64, "batch_size": 32, "n_epochs": 2,
            "policy_kwargs": {"net_arch": [16]}},
    "kl_regularization": {"kl_ref_decay_steps": 40},
    "warm_start": {"n_samples": 128, "bc_epochs": 2, "bc_batch_size": 64},
    "monitoring": {"progress_bar": False, "tensorboard": False},
    "evaluation": {"episodes": 1, "num_requests": 24, "routers": ["round_robin"]},
}
FAILING_GRID = 'ppo.policy_kwargs=[{"net_arch": [16]}, {"net_arch": "oops"}]'
"""Two configurations: the tiny network, and one whose net_arch passes the config checks but makes
the policy's construction raise inside the trial."""


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("df, expected", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (9, 2.2622),
                                          (30, 2.0423)])
def test_t_critical_matches_the_t_table(df, expected):
    assert t_critical(0.95, df) == pytest.approx(expected, abs=1e-4)


def test_t_central_mass_matches_closed_forms():
    assert t_central_mass(1.0, 1) == pytest.approx(0.5)  # Cauchy: P(|T| <= 1) = 1/2
    for t in (0.3, 2.0, 7.0):
        assert t_central_mass(t, 2) == pytest.approx(t / math.sqrt(2 + t * t))
    assert t_central_mass(0.0, 5) == 0.0 and t_central_mass(1e6, 7) == pytest.approx(1.0)


def test_estimate_gives_mean_and_t_interval_over_finite_values():
    result = estimate([1.0, 2.0, None, 3.0, float("nan"), 4.0])
    std = math.sqrt(5 / 3)
    assert (result.n, result.mean, result.std) == (4, 2.5, pytest.approx(std))
    assert result.half_width == pytest.approx(3.18245 * std / 2, rel=1e-5)
    single = estimate([7.0])
    assert (single.n, single.mean, single.ci_low) == (1, 7.0, None)
    assert estimate([]).mean is None


def test_paired_comparison_uses_common_seeds_only():
    best = {0: 1.00, 1: 1.10, 2: 0.90}
    other = {0: 2.00, 1: 2.15, 2: 1.92, 3: 0.1}  # seed 3 has no partner: left out
    result = paired_comparison(best, other, "min")
    assert result["seeds"] == [0, 1, 2]
    assert result["difference"]["mean"] == pytest.approx(-1.0233, abs=1e-4)
    assert result["difference"]["ci95"][1] < 0 and result["verdict"].startswith("better with 95% confidence")
    assert 0 < result["p_value"] < 0.001


def test_paired_comparison_with_noise_is_not_called_better():
    result = paired_comparison({0: 1.0, 1: 3.0, 2: 2.0}, {0: 2.0, 1: 1.0, 2: 2.5}, "min")
    assert result["difference"]["ci95"][0] < 0 < result["difference"]["ci95"][1]
    assert result["verdict"].startswith("not distinguishable") and result["p_value"] > 0.5
    assert paired_p_value(estimate([0.5, 0.5])) == 0.0  # identical non-zero differences: certain


# ---------------------------------------------------------------------------------------------
# Plan, grid values and errors (no Ray needed)
# ---------------------------------------------------------------------------------------------


def test_grid_values_are_checked_and_typed_like_the_config():
    base = TrainConfig()
    assert parse_grid("kl_regularization.kl_coef=0.05, 1", base).values == (0.05, 1.0)
    assert parse_grid("warm_start.enabled=true,false", base).values == (True, False)
    axis = parse_grid('env.kwargs=[{"num_requests": 48}, {"num_replicas": 2}]', base)
    assert axis.values == ({"num_requests": 48}, {"num_replicas": 2})
    assert axis.texts == ('{"num_requests": 48}', '{"num_replicas": 2}')


def test_pipeline_override_reads_flag_strings_and_json_values():
    config = override(TrainConfig(), "ppo.learning_rate", "0.001")
    config = override(config, "evaluation.routers", ["lor", "jsq"])
    assert config.ppo.learning_rate == 0.001 and config.evaluation.routers == ["lor", "jsq"]
    with pytest.raises(ConfigError, match="ppo.n_envs"):
        override(config, "ppo.n_envs", 0)
    with pytest.raises(ConfigError, match="unknown config key 'ppo.n_env'"):
        override(config, "ppo.n_env", 2)


def test_resolve_config_takes_every_config_form(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY_CONFIG))
    from_file = resolve_config(path, overrides={"seed": 4})
    assert from_file == resolve_config(TINY_CONFIG, overrides={"seed": 4}) and from_file.seed == 4
    assert resolve_config(from_file) is from_file and from_file.ppo.n_envs == 2
    assert resolve_config(None) == TrainConfig()  # no config: the built-in defaults


def test_seeds_and_run_directories_per_configuration(tmp_path):
    plan = make_plan(None, ["kl_regularization.kl_coef=0.1,0.2", "ppo.n_epochs=2,4"], 3, str(tmp_path), "e2e_mean")
    configurations = plan.configurations()
    assert plan.seeds == (0, 1, 2) and len(configurations) == 4
    assert configurations[1].overrides == {"kl_regularization.kl_coef": 0.1, "ppo.n_epochs": 4}
    assert plan.index_of({"kl_regularization.kl_coef": "0.2", "ppo.n_epochs": "2"}) == 2
    config = plan.trial_config(configurations[3], 2)
    assert (config.seed, config.kl_regularization.kl_coef, config.ppo.n_epochs) == (2, 0.2, 4)
    assert config.output_dir == str(tmp_path / "config_003" / "seed_2")
    assert (config.number_runs, config.overwrite) == (False, True)  # exactly its directory, rewritten on a rerun


@pytest.mark.parametrize(
    "options, message",
    [
        (["--grid", "kl_regularization.kl_cof=0.1"], "unknown config key 'kl_regularization.kl_cof'"),
        (["--grid", "kl_regularization.kl_coef=0.1,-1"], "--grid kl_regularization.kl_coef: --kl-coef"),
        (["--grid", "ppo.n_envs=2,two"], "expected integer, got 'two'"),
        (["--grid", "seed=1,2"], "--grid seed: the sweep sets"),
        (["--grid", "number_runs=true,false"], "--grid number_runs: the sweep sets"),
        (["--grid", "evaluation.routers=lor,jsq"], "give them as a JSON array"),
        (["--grid", "ppo.n_epochs=2", "--grid", "ppo.n_epochs=4"], "key given twice: ppo.n_epochs"),
        (["--grid", "warm_start.expert=lor,oracle"], "config_001 (warm_start.expert=\"oracle\"): warm_start.expert"),
        (["--grid", "ppo.n_epochs=2,4", "--search", "optuna"], "give --trials"),
        (["--grid", "ppo.n_epochs=2,4", "--trials", "3"], "--trials: applies to --search optuna only"),
        (["--seeds", "0"], "--seeds: must be >= 1"),
        (["--num-cpus", "0"], "--num-cpus: must be >= 1"),
        (["--address", "auto", "--num-cpus", "2"], "--num-cpus: sets the local Ray's size"),
    ],
)
def test_bad_sweep_options_exit_2_with_one_line(tmp_path, capsys, options, message):
    assert main(["sweep", *options, "--output-dir", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_without_ray_the_sweep_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.tune", None)
    assert main(["sweep", "--grid", "ppo.n_epochs=2,4", "--output-dir", str(tmp_path / "s")]) == 2
    assert "sweep needs Ray Tune: pip install 'vidur-env[sweep]'" in capsys.readouterr().err


def ok_record(plan, configuration, seed, e2e_mean):
    metrics = {metric: 1.0 for metric in METRIC_MODES} | {"e2e_mean": e2e_mean}
    return trial_record(plan, configuration, seed, OK, run_dir="unused", metrics=metrics)


def test_report_ranks_configurations_and_keeps_failed_and_missing_trials(tmp_path):
    plan = make_plan(None, ["kl_regularization.kl_coef=0.1,0.2,0.3"], 3, str(tmp_path), "e2e_mean")
    c0, c1, c2 = plan.configurations()
    for seed, (a, b) in zip(plan.seeds, [(2.0, 1.0), (2.2, 1.1), (1.9, 0.95)]):
        write_record(plan.record_path(c0, seed), ok_record(plan, c0, seed, a))
        write_record(plan.record_path(c1, seed), ok_record(plan, c1, seed, b))
    write_record(plan.record_path(c2, 0), {**ok_record(plan, c2, 0, 0.5), "status": "failed",
                                           "error": "ValueError: diverged", "metrics": None})
    report = write_report(plan, "grid")
    assert report["best"] == "config_001" and report["ranking"] == ["config_001", "config_000"]
    assert report["comparison"]["runner_up"] == "config_000"
    assert report["comparison"]["verdict"].startswith("better with 95% confidence")
    by_name = {c["name"]: c for c in report["configurations"]}
    assert by_name["config_001"]["metrics"]["e2e_mean"]["n"] == 3
    assert by_name["config_001"]["metrics"]["e2e_mean"]["mean"] == pytest.approx(1.01667, abs=1e-5)
    failed = {(f["name"], f["seed"]): f for f in report["failed"]}
    assert failed[("config_002", 0)]["error"] == "ValueError: diverged"
    assert failed[("config_002", 1)]["status"] == "not run" and len(failed) == 3
    markdown = (tmp_path / "sweep.md").read_text()
    assert "ValueError: diverged" in markdown and "`config_001` (kl_regularization.kl_coef=0.2)" in markdown
    assert json.loads((tmp_path / "sweep.json").read_text())["best"] == "config_001"


def test_an_output_dir_of_another_sweep_is_refused(tmp_path, capsys):
    plan = make_plan(None, ["kl_regularization.kl_coef=0.1,0.2"], 1, str(tmp_path), "e2e_mean")
    configuration = plan.configurations()[0]
    write_record(plan.record_path(configuration, 0), ok_record(plan, configuration, 0, 1.0))
    assert main(["sweep", "--grid", "kl_regularization.kl_coef=0.3,0.2", "--seeds", "1", "--output-dir", str(tmp_path)]) == 2
    assert "is a trial of another sweep" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The pipeline function the trials call
# ---------------------------------------------------------------------------------------------


def test_run_training_takes_a_dict_with_overrides_and_returns_the_run(tmp_path):
    run_dir, summary = run_training(TINY_CONFIG, overrides={"seed": 3, "output_dir": str(tmp_path / "run"),
                                                            "number_runs": False, "kl_regularization.kl_coef": "0.05"})
    assert run_dir == tmp_path / "run" and (run_dir / "report.md").is_file()
    assert summary == json.loads((run_dir / "summary.json").read_text()) and summary["num_timesteps"] == 256
    used = json.loads((run_dir / "config_used.json").read_text())
    assert (used["seed"], used["kl_regularization"]["kl_coef"]) == (3, 0.05)
    rows = json.loads((run_dir / "evaluation.json").read_text())["rows"]
    assert model_metrics(summary)["e2e_mean"] == rows["klppo"]["e2e_mean"] > 0


def test_a_bad_override_raises_before_training(tmp_path):
    with pytest.raises(ConfigError, match="ppo.batch_size"):
        run_training(TINY_CONFIG, overrides={"output_dir": str(tmp_path / "run"), "ppo.batch_size": 1})
    assert not (tmp_path / "run").exists()
    assert model_metrics({"evaluation": None}) == {}


# ---------------------------------------------------------------------------------------------
# Tiny sweeps on a local Ray with 2 CPUs
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs) for the module's sweeps: the sweep reuses a running Ray."""
    ray = pytest.importorskip("ray")
    from sb3_klppo.sweep_tune import RayOptions, start_ray

    start_ray(RayOptions(num_cpus=2))
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.json"
    path.write_text(json.dumps(TINY_CONFIG))
    return path


@pytest.fixture(scope="module")
def failing_sweep(local_ray, tiny_config, tmp_path_factory) -> tuple[list[str], Path, int]:
    out = tmp_path_factory.mktemp("sweep") / "out"
    argv = ["sweep", "--config", str(tiny_config), "--seeds", "2", "--grid", FAILING_GRID, "--output-dir", str(out)]
    return argv, out, main(argv)


def test_tiny_sweep_aggregates_both_seeds_and_reports_the_failures(failing_sweep):
    _, out, code = failing_sweep
    assert code == 1  # some trial failed
    report = json.loads((out / "sweep.json").read_text())
    good, bad = report["configurations"]
    assert good["seeds_ok"] == [0, 1] and report["best"] == good["name"]
    for metric, figures in good["metrics"].items():
        assert figures["n"] == 2, metric
        low, high = figures["ci95"]
        assert low <= figures["mean"] <= high
    for trial in good["trials"]:
        rows = json.loads((Path(trial["run_dir"]) / "evaluation.json").read_text())["rows"]
        assert trial["metrics"]["e2e_mean"] == rows["klppo"]["e2e_mean"]
    assert bad["seeds_ok"] == [] and [t["status"] for t in bad["trials"]] == ["failed", "failed"]
    assert all("ppo.policy_kwargs" in f["error"] for f in report["failed"]) and len(report["failed"]) == 2
    assert "## Failed trials" in (out / "sweep.md").read_text()


def test_rerun_resumes_skipping_finished_trials(failing_sweep):
    argv, out, _ = failing_sweep
    kept, redo = out / "trials" / "config_000_seed_0.json", out / "trials" / "config_000_seed_1.json"
    kept_text, kept_model = kept.read_text(), out / "config_000" / "seed_0" / "model.zip"
    kept_mtime = kept_model.stat().st_mtime_ns
    before = json.loads(redo.read_text())
    redo.unlink()  # as if the sweep had been interrupted during this trial
    assert main(argv) == 1  # the failing configuration fails again, and is reported again
    assert kept.read_text() == kept_text and kept_model.stat().st_mtime_ns == kept_mtime
    after = json.loads(redo.read_text())
    assert after["status"] == OK and after["metrics"] == before["metrics"]  # same seed, same result
    report = json.loads((out / "sweep.json").read_text())
    assert report["configurations"][0]["seeds_ok"] == [0, 1] and len(report["failed"]) == 2


def test_optuna_search_samples_configurations_and_resumes_its_study(local_ray, tiny_config, tmp_path):
    out = tmp_path / "optuna"
    argv = ["sweep", "--config", str(tiny_config), "--seeds", "1", "--grid", "kl_regularization.kl_coef=0.0,0.2",
            "--search", "optuna", "--trials", "2", "--output-dir", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "sweep.json").read_text())
    assert report["search"] == "optuna" and 1 <= len(report["configurations"]) <= 2 and not report["failed"]
    assert (out / "optuna.db").is_file()
    records = {path: path.stat().st_mtime_ns for path in (out / "trials").glob("*.json")}
    assert main(argv) == 0  # the study already has its 2 samples: nothing runs again
    assert {path: path.stat().st_mtime_ns for path in (out / "trials").glob("*.json")} == records


def test_every_sweep_argument_is_a_flag_with_its_docstring_as_help(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, doc in field_docs(SweepArgs).items():
        assert f"--{name.replace('_', '-')}" in text and doc.split(" (")[0] in text, name
