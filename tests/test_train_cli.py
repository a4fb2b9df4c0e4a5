"""The main job end to end on a tiny budget: every artifact, resume, and clean errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

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
