"""The main job end to end on a tiny budget: every artifact, resume, and clean errors."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from sb3_klppo import KLPPO
from sb3_klppo.cli import main
from sb3_klppo.config import load_config
from sb3_klppo.klppo import linear_schedule_value
from sb3_klppo.report import training_health

# A few hundred steps of short episodes: 2 updates of 2 envs x 64 steps, 8 gradient steps each.
TINY = [
    "--env-kwargs", '{"num_requests": 48}',
    "--total-timesteps", "256", "--n-envs", "2", "--n-steps", "64", "--batch-size", "32", "--n-epochs", "2",
    "--bc-samples", "128", "--bc-epochs", "2", "--bc-batch-size", "64",
    "--kl-ref-coef-initial", "0.5", "--kl-ref-coef-final", "0.1", "--kl-ref-decay-steps", "40",
    "--eval-episodes", "1", "--eval-requests", "24", "--eval-routers", "round_robin,lor",
    "--policy-kwargs", '{"net_arch": [16]}', "--no-progress-bar",
]
ARTIFACTS = ("model.zip", "vecnormalize.pkl", "config_used.json", "report.md", "summary.json", "evaluation.json",
             "progress.csv", "kl_stats.csv", "latency_cdf.png", "approx_kl.png", "kl_schedule.png", "learning_curve.png")


QUICK = [*TINY, "--no-warm-start", "--no-evaluate", "--curve-every", "0"]
"""TINY without cloning, curve and evaluation: for the tests about run directories."""


def run_dir(prefix: Path, number: int = 1) -> Path:
    """Where a run given ``--output-dir prefix`` writes: the numbered directory."""
    return prefix.with_name(f"{prefix.name}_{number}")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "first"
    assert main(["train", *TINY, "--output-dir", str(out)]) == 0
    return run_dir(out)


def kl_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_a_tiny_run_writes_every_artifact(first_run):
    for name in ARTIFACTS:
        assert (first_run / name).is_file(), name
    assert list(first_run.glob("events.out.tfevents.*")), "no TensorBoard event file"
    assert all((first_run / name).stat().st_size > 1000 for name in ARTIFACTS if name.endswith(".png"))


def test_the_config_used_holds_the_overrides(first_run):
    used = load_config(first_run / "config_used.json")
    assert used.ppo.total_timesteps == 256 and used.ppo.policy_kwargs == {"net_arch": [16]}
    assert used.output_dir == str(first_run)


def test_report_compares_the_model_with_its_teacher_and_the_heuristics(first_run):
    report = (first_run / "report.md").read_text()
    for name in ("klppo", "round_robin", "lor", "lower_bound"):
        assert f"| {name} |" in report
    assert "Behaviour cloning: 128 expert decisions" in report
    assert "## Training health" in report and "approx_kl" in report
    rows = json.loads((first_run / "evaluation.json").read_text())["rows"]
    assert rows["klppo"]["num_requests"] == 24


def test_kl_csv_has_one_row_per_update_with_the_schedule(first_run):
    rows = kl_rows(first_run / "kl_stats.csv")
    assert len(rows) == 2
    coefs = [float(r["ref_kl_coef"]) for r in rows]
    assert coefs == sorted(coefs, reverse=True) and coefs[0] < 0.5
    assert all(float(r["ref_kl"]) >= 0 for r in rows)


def test_saved_model_has_its_reference_and_schedule_step(first_run):
    model = KLPPO.load(first_run / "model.zip", device="cpu")
    assert model.reference_policy is not None
    assert model.kl_schedule_step == 16 and model.num_timesteps == 256


def test_resume_continues_the_reference_kl_schedule(first_run, tmp_path):
    before = KLPPO.load(first_run / "model.zip", device="cpu")
    out = run_dir(tmp_path / "resumed")
    code = main(["train", *TINY, "--resume", str(first_run / "model.zip"), "--output-dir", str(tmp_path / "resumed"),
                 "--no-evaluate"])
    assert code == 0
    after = KLPPO.load(out / "model.zip", device="cpu")
    assert after.kl_schedule_step == before.kl_schedule_step + 16
    assert after.num_timesteps == before.num_timesteps + 256
    expected = linear_schedule_value(after.kl_schedule_step, 0.5, 0.1, 40)
    assert after.ref_kl_coef == pytest.approx(expected) and after.ref_kl_coef < before.ref_kl_coef
    # The first update after resuming uses the continued coefficient, not kl_ref_coef_initial again.
    first_after = float(kl_rows(out / "kl_stats.csv")[0]["ref_kl_coef"])
    last_before = float(kl_rows(first_run / "kl_stats.csv")[-1]["ref_kl_coef"])
    assert first_after < last_before
    assert "Resumed from" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--env-kwargs", '{"num_replicaz": 2}'], "num_replicaz"),
        (["--expert", "oracle"], "warm_start.expert"),
        (["--env-id", "NoSuchEnv-v0", "--no-evaluate"], "env.id 'NoSuchEnv-v0'"),
        (["--env-id", "CartPole-v1"], "evaluation: the harness runs VidurRouting-v0 only"),
        (["--eval-routers", "round_robin,fastest"], "evaluation.routers: unknown router(s) fastest"),
        (["--resume", "missing/model.zip"], "resume: no saved model"),
    ],
)
def test_user_errors_exit_2_with_a_message(tmp_path, capsys, flags, message):
    assert main(["train", *TINY, *flags, "--output-dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def updates(approx_kl: list[float], entropy: list[float]) -> list[dict[str, float]]:
    return [{"timesteps": 100.0 * i, "approx_kl": k, "entropy": e} for i, (k, e) in enumerate(zip(approx_kl, entropy))]


def test_health_block_flags_a_collapsing_policy():
    lines = training_health(updates([0.01, 0.03, 0.05], [0.6, 0.2, 0.01]), target_kl=0.02, entropy_min=0.05)
    text = "\n".join(lines)
    assert "above target_kl=0.02 in 2 of 3 updates" in text
    assert "WARNING: entropy fell below entropy_min" in text


def test_health_block_flags_a_dead_uniform_policy():
    ln4 = math.log(4)
    text = "\n".join(training_health(updates([1e-3, 0.0, 0.0, 0.0], [ln4] * 4), 0.02, 0.05, max_entropy=ln4))
    assert "stopped changing" in text and "still (nearly) uniform" in text
    healthy = "\n".join(training_health(updates([1e-3] * 4, [0.5] * 4), 0.02, 0.05, max_entropy=ln4))
    assert "WARNING" not in healthy


# --------------------------------------------------------------------------- run directories


def test_runs_are_numbered_and_never_overwritten(tmp_path):
    prefix = tmp_path / "job"
    assert main(["train", *QUICK, "--output-dir", str(prefix)]) == 0
    first_model = (run_dir(prefix, 1) / "model.zip").read_bytes()
    assert main(["train", *QUICK, "--output-dir", str(prefix), "--seed", "5"]) == 0
    assert (run_dir(prefix, 2) / "model.zip").is_file()
    assert (run_dir(prefix, 1) / "model.zip").read_bytes() == first_model  # untouched
    assert load_config(run_dir(prefix, 2) / "config_used.json").output_dir == str(run_dir(prefix, 2))


def test_a_finished_run_is_written_into_only_with_overwrite(tmp_path, capsys):
    target = tmp_path / "fixed"
    assert main(["train", *QUICK, "--output-dir", str(target), "--no-number-runs"]) == 0
    before = (target / "model.zip").read_bytes()
    assert main(["train", *QUICK, "--output-dir", str(target), "--no-number-runs", "--seed", "3"]) == 2
    err = capsys.readouterr().err
    assert "holds a finished run" in err and "--overwrite" in err and "Traceback" not in err
    assert (target / "model.zip").read_bytes() == before
    assert main(["train", *QUICK, "--output-dir", str(target), "--no-number-runs", "--seed", "3", "--overwrite"]) == 0
    assert (target / "model.zip").read_bytes() != before


def test_resume_writes_a_new_directory_and_trains_on_new_workloads(first_run, tmp_path):
    from sb3_klppo.pipeline import make_vec_env
    from sb3_klppo.run_dirs import training_seed

    before = (first_run / "model.zip").read_bytes()
    # The README's example: --resume into the same --output-dir as the first run.
    prefix = first_run.with_name(first_run.name.rsplit("_", 1)[0])
    assert main(["train", *QUICK, "--resume", str(first_run / "model.zip"), "--output-dir", str(prefix)]) == 0
    resumed = run_dir(prefix, 2)
    assert (first_run / "model.zip").read_bytes() == before
    first_seed = json.loads((first_run / "summary.json").read_text())["env_seed"]
    resumed_seed = json.loads((resumed / "summary.json").read_text())["env_seed"]
    assert first_seed == 0 and resumed_seed == training_seed(0, 256) != first_seed
    assert training_seed(0, 256) == training_seed(0, 256) != training_seed(0, 512)  # deterministic, per point
    # The envs those seeds give route different requests.
    config = load_config(first_run / "config_used.json")
    arrivals = []
    for seed in (first_seed, resumed_seed):
        venv = make_vec_env(config, seed=seed)
        venv.reset()
        arrivals.append(venv.get_attr("requests")[0].arrived_at)
    assert not np.array_equal(*arrivals)


# --------------------------------------------------------------------------- output by verbosity


def table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[int, tuple[str, str]]:
    """stdout and stderr of the tiny job at verbose 0 and 1, run as a user runs it (a subprocess)."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    results = {}
    for verbose in (0, 1):
        out = tmp_path_factory.mktemp("verbose") / "run"
        argv = [a for a in TINY if a != "--no-progress-bar"]
        done = subprocess.run([sys.executable, "-m", "sb3_klppo", "train", *argv, "--verbose", str(verbose),
                               "--output-dir", str(out)], cwd=repo, capture_output=True, timeout=600)
        # Decoded by hand: text mode would turn the bar's carriage returns into newlines.
        stdout, stderr = done.stdout.decode(), done.stderr.decode()
        assert done.returncode == 0, stderr[-3000:]
        results[verbose] = (stdout, stderr)
    return results


def test_verbose_0_prints_the_final_table_only(outputs):
    stdout, stderr = outputs[0]
    assert stderr == ""
    lines = stdout.splitlines()
    # The report's path, then the table: header, rule, 3 routers, klppo, lower_bound.
    assert len(lines) == 1 + 7 and lines[0].startswith("report: ")
    assert table_lines(stdout) == lines[1:]


def test_verbose_1_adds_one_progress_bar_over_every_phase_and_a_summary(outputs):
    stdout, stderr = outputs[1]
    assert stderr.count("\n") == 1  # one bar, redrawn in place, closed once
    frames = [frame for frame in stderr.replace("\n", "\r").split("\r") if frame.strip()]
    for phase in ("cloning", "learning curve", "training", "evaluation"):
        assert any(frame.startswith(phase) for frame in frames), phase
    done, total = re.search(r"(\d+)/(\d+)", frames[-1]).groups()
    assert done == total and "100%" in frames[-1]  # the plan counted every step of every phase
    lines = stdout.splitlines()
    assert table_lines(stdout) == table_lines(outputs[0][0])
    assert 8 < len(lines) < 40 and lines[0].startswith("run directory: ") and "Wall time" in stdout
    assert "rollout/" not in stdout


def test_verbose_2_adds_sb3s_table(outputs, tmp_path, capsys):
    assert main(["train", *TINY, "--verbose", "2", "--output-dir", str(tmp_path / "run")]) == 0
    stdout = capsys.readouterr().out
    assert "| rollout/" in stdout and "| train/" in stdout
    assert len(stdout.splitlines()) > len(outputs[1][0].splitlines()) + 30


# --------------------------------------------------------------------------- learning curve and report


def test_learning_curve_evaluates_fixed_seeds_with_the_teacher_as_reference(first_run):
    summary = json.loads((first_run / "summary.json").read_text())
    curve = summary["learning_curve"]
    assert curve["seeds"] == [1001, 1002, 1003]  # after the evaluation's seed 1000 (1 episode)
    assert [p["timesteps"] for p in curve["points"]] == [0.0, 256.0]  # before training and at the end
    assert curve["reference_router"] == "least_work_left" and curve["reference"]["e2e_mean"] > 0
    # The first point is the cloned policy before any PPO update, on the same seeds as the reference.
    assert all(p["e2e_mean"] > 0 for p in curve["points"])


def test_report_header_names_the_scenario_and_the_changed_settings(first_run):
    report = (first_run / "report.md").read_text()
    assert 'Scenario: `vidur_env:VidurRouting-v0`, env.kwargs {"num_requests": 48}' in report
    assert "4 replicas" in report and "24 requests per episode" in report
    assert "- `ppo.total_timesteps` = `256` (default `131072`)" in report
    assert "`kl_regularization.kl_coef`" not in report  # unchanged settings are not listed


def test_every_comparison_in_the_report_carries_a_paired_interval(first_run):
    report = (first_run / "report.md").read_text()
    section = report.split("### Where the trained router wins and loses")[1].split("## Plots")[0]
    comparisons = re.findall(r"(?:E2E|TTFT) (better|worse|tie) \(([-+][\d.]+%[^)]*)\)", section)
    assert len(comparisons) == 4 * 3  # 4 metrics x 3 baselines
    acceptance = re.findall(r"; paired ([-+][\d.]+%.*?): (better|worse|tie)\): (PASS|FAIL)", section)
    assert len(acceptance) == 3  # vs the teacher, round_robin and lor
    assert "1 episode: no interval" in section  # one evaluation episode: every difference is a tie
    assert {verdict for verdict, _ in comparisons} == {"tie"}
    episodes = json.loads((first_run / "evaluation.json").read_text())["episodes"]
    assert set(episodes) == {"klppo", "round_robin", "lor", "least_work_left", "lower_bound"}
    assert all(len(values) == 1 for values in episodes["klppo"].values())


def test_the_issues_noise_is_called_a_tie_and_a_real_gain_better():
    from types import SimpleNamespace

    from sb3_klppo.report import acceptance, comparisons
    from vidur_env.paired import PairedDifference

    differences = {"noise": PairedDifference(-0.13, 0.14, 10), "teacher": PairedDifference(-5.0, 1.0, 10)}
    rows = {"klppo": {"e2e_mean": 1.0}, "noise": {"e2e_mean": 1.0013}, "teacher": {"e2e_mean": 1.05}}
    result = SimpleNamespace(rows=rows, compare=lambda ours, theirs, metric: differences[theirs])
    lines = comparisons(result, "klppo", ["noise", "teacher"])
    assert "mean E2E tie (-0.13% ± 0.14%)" in lines[0] and "better" not in lines[0]
    assert "mean E2E better (-5.00% ± 1.00%)" in lines[1]
    assert acceptance(result, "klppo", "teacher") == [
        "- mean E2E <= 1.01 x teacher `teacher` (1 vs 1.06 s; paired -5.00% ± 1.00%: better): PASS"]


def test_subprocess_envs_step_exactly_like_in_process_envs():
    """`ppo.vec_env: subproc` runs each env copy in its own process; the copies must see the
    same seeds, so the same actions give the same observations and rewards as `dummy`."""
    from dataclasses import replace

    from sb3_klppo.config import TrainConfig
    from sb3_klppo.pipeline import make_vec_env

    base = TrainConfig()
    small = replace(base, env=replace(base.env, kwargs={"num_replicas": 2, "num_requests": 12}))
    runs = {}
    for kind in ("dummy", "subproc"):
        config = replace(small, ppo=replace(small.ppo, n_envs=2, vec_env=kind, normalize_reward=False))
        venv = make_vec_env(config, seed=5)
        try:
            steps = [venv.reset()]
            for k in range(30):  # past one episode end (12 decisions), into the auto-reset
                obs, rewards, dones, _ = venv.step(np.array([k % 2, (k + 1) % 2]))
                steps += [obs, rewards, dones]
        finally:
            venv.close()
        runs[kind] = steps
    for ours, theirs in zip(runs["subproc"], runs["dummy"]):  # DummyVecEnv keeps rewards in float32
        np.testing.assert_array_equal(np.asarray(ours, dtype=theirs.dtype), theirs)


def test_every_vec_env_choice_has_a_class():
    from dataclasses import fields

    from sb3_klppo.config import PPOConfig
    from sb3_klppo.config import VEC_ENV_CLASSES

    choices = next(f for f in fields(PPOConfig) if f.name == "vec_env").metadata["choices"]
    assert set(choices) == set(VEC_ENV_CLASSES)
