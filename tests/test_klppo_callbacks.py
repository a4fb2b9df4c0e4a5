"""Callbacks: target-KL warn / adapt / stop, the per-update CSV and the reference-KL schedule log."""

from __future__ import annotations

import csv

import pytest
from stable_baselines3 import PPO
from stable_baselines3.common.logger import KVWriter, Logger

from sb3_klppo import KLPPO
from sb3_klppo.callbacks import (
    KLStatsCSVCallback,
    RefKLScheduleLogger,
    TargetKLExceededWarning,
    TargetKLMonitor,
    adapted_kl_coef,
)
from sb3_klppo.klppo import linear_schedule_value

FAST = dict(n_steps=32, batch_size=32, n_epochs=2, seed=0, device="cpu", policy_kwargs=dict(net_arch=[16]))


class CapturedDumps(KVWriter):
    """A logger output that keeps every dump in memory."""

    def __init__(self):
        self.dumps: list[dict] = []

    def write(self, key_values, key_excluded, step=0):
        self.dumps.append(dict(key_values))


class Driver:
    """Plays SB3's hook sequence around fake updates, so callback logic is tested without training."""

    def __init__(self, callback, kl_coef: float = 1.0):
        self.model = KLPPO("MlpPolicy", "CartPole-v1", kl_coef=kl_coef, **FAST)
        self.model.set_logger(Logger(folder=None, output_formats=[]))
        self.callback = callback
        callback.init_callback(self.model)
        callback.on_training_start({}, {})

    def update(self, approx_kl: float) -> bool:
        """One train() with the given approx_kl, then the next rollout's first hooks."""
        self.model._n_updates += self.model.n_epochs
        self.model.last_update_stats = {"approx_kl": approx_kl}
        self.callback.on_rollout_start()
        return self.callback.on_step()


def test_adapt_rule_is_rllibs():
    assert adapted_kl_coef(1.0, approx_kl=0.021, target_kl=0.01) == 1.5
    assert adapted_kl_coef(1.0, approx_kl=0.0049, target_kl=0.01) == 0.5
    assert adapted_kl_coef(1.0, approx_kl=0.01, target_kl=0.01) == 1.0
    assert adapted_kl_coef(1.0, approx_kl=0.02, target_kl=0.01) == 1.0


def test_adapt_scales_kl_coef_once_per_update():
    driver = Driver(TargetKLMonitor(target_kl=0.01, action="adapt"), kl_coef=1.0)
    driver.update(0.05)
    assert driver.model.kl_coef == 1.5
    driver.callback.on_rollout_start()  # same update seen again: no second scaling
    assert driver.model.kl_coef == 1.5
    driver.update(0.001)
    assert driver.model.kl_coef == 0.75
    driver.update(0.015)
    assert driver.model.kl_coef == 0.75
    assert driver.callback.n_exceedances == 2
    assert driver.model.logger.name_to_value["train/approx_kl_over_target"] == pytest.approx(1.5)


def test_stop_after_k_consecutive_exceedances():
    driver = Driver(TargetKLMonitor(target_kl=0.01, action="stop", patience=2))
    assert driver.update(0.02) is True
    assert driver.update(0.005) is True  # the streak resets
    assert driver.update(0.02) is True
    assert driver.update(0.03) is False
    assert driver.callback.consecutive_exceedances == 2 and driver.callback.n_exceedances == 3


def test_warn_on_each_exceedance():
    driver = Driver(TargetKLMonitor(target_kl=0.01, action="warn"))
    with pytest.warns(TargetKLExceededWarning, match="exceeds target_kl"):
        driver.update(0.02)
    assert driver.update(0.001) is True


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(target_kl=0.0), "target_kl"),
        (dict(target_kl=0.1, action="halt"), "action"),
        (dict(target_kl=0.1, patience=0), "patience"),
    ],
)
def test_monitor_rejects_bad_arguments(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TargetKLMonitor(**kwargs)


def test_adapt_needs_a_kl_coef():
    with pytest.raises(ValueError, match="kl_coef"):
        TargetKLMonitor(0.01, action="adapt").init_callback(PPO("MlpPolicy", "CartPole-v1", device="cpu"))


@pytest.mark.parametrize("algo", [KLPPO, PPO])
def test_stop_ends_a_real_run_without_an_extra_update(algo):
    """approx_kl > 0 always exceeds a tiny target: updates 1 and 2 exceed, no third train()."""
    model = algo("MlpPolicy", "CartPole-v1", **FAST)
    monitor = TargetKLMonitor(target_kl=1e-12, action="stop", patience=2)
    model.learn(10 * FAST["n_steps"], callback=monitor)
    assert model._n_updates == 2 * FAST["n_epochs"]
    assert model.num_timesteps < 4 * FAST["n_steps"]


def test_adapt_in_a_real_run_handles_the_last_update_at_training_end():
    model = KLPPO("MlpPolicy", "CartPole-v1", kl_coef=1.0, **FAST)
    model.learn(3 * FAST["n_steps"], callback=TargetKLMonitor(target_kl=1e3, action="adapt"))
    assert model.kl_coef == pytest.approx(0.5**3)  # three updates, each far below the target


@pytest.mark.parametrize("algo", [KLPPO, PPO])
def test_csv_has_one_row_per_update(tmp_path, algo):
    model = algo("MlpPolicy", "CartPole-v1", **FAST)
    callback = KLStatsCSVCallback(tmp_path / "logs" / "kl.csv")
    model.learn(3 * FAST["n_steps"], callback=callback)
    model.learn(FAST["n_steps"], callback=callback, reset_num_timesteps=False)
    with (tmp_path / "logs" / "kl.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["update"]) for r in rows] == [2, 4, 6, 8]
    assert [int(r["timesteps"]) for r in rows] == [32, 64, 96, 128]
    assert float(rows[-1]["approx_kl"]) == pytest.approx(model.logger.name_to_value["train/approx_kl"])
    assert float(rows[-1]["entropy_loss"]) == pytest.approx(model.logger.name_to_value["train/entropy_loss"])
    if algo is KLPPO:
        assert float(rows[-1]["entropy"]) == pytest.approx(model.last_update_stats["entropy"])
        assert float(rows[-1]["kl_coef"]) == 0.0
    else:
        assert rows[-1]["ref_kl"] == "" and rows[-1]["entropy"] == ""


def test_schedule_logger_follows_the_reference_weight():
    model = KLPPO(
        "MlpPolicy", "CartPole-v1", kl_ref_coef_initial=1.0, kl_ref_coef_final=0.2, kl_ref_decay_steps=4, **FAST
    )
    model.set_reference_policy()
    dumps = CapturedDumps()
    model.set_logger(Logger(folder=None, output_formats=[dumps]))
    logger = RefKLScheduleLogger()
    model.learn(4 * FAST["n_steps"], callback=logger)
    steps = [step for _, step, _ in logger.history]
    assert steps == [0, 2, 4, 6]
    expected = [linear_schedule_value(step, 1.0, 0.2, 4) for step in steps]
    assert [coef for *_, coef in logger.history] == pytest.approx(expected)
    assert [d["kl_schedule/step"] for d in dumps.dumps] == steps
    assert [d["kl_schedule/ref_kl_coef"] for d in dumps.dumps] == [coef for *_, coef in logger.history]


def test_schedule_logger_needs_klppo():
    with pytest.raises(ValueError, match="KLPPO"):
        RefKLScheduleLogger().init_callback(PPO("MlpPolicy", "CartPole-v1", device="cpu"))


def test_periodic_evaluation_runs_before_training_every_k_updates_and_at_the_end():
    from sb3_klppo.callbacks import PeriodicEvaluation

    seen_steps = []

    def evaluate(model):
        seen_steps.append(model.num_timesteps)
        return {"score": float(len(seen_steps))}

    curve = PeriodicEvaluation(evaluate, every=2)
    model = KLPPO("MlpPolicy", "CartPole-v1", **FAST)
    model.learn(32 * 5, callback=curve)  # 5 updates of 32 steps
    assert seen_steps == [0, 64, 128, 160]  # before, after updates 2 and 4, and after the last
    assert [p["updates"] for p in curve.history] == [0, 2, 4, 5]
    assert [p["score"] for p in curve.history] == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="every"):
        PeriodicEvaluation(evaluate, every=0)


@pytest.mark.parametrize("figure, scores, best", [("e2e_mean", [3.0, 1.0, 2.0, 4.0], 1),
                                                  ("return_mean", [3.0, 1.0, 2.0, 4.0], 3),
                                                  ("ttft_mean", [1.0, 2.0, 3.0, 4.0], 0)])
def test_keep_best_ends_with_the_parameters_of_the_best_curve_point(figure, scores, best):
    from sb3_klppo.callbacks import PeriodicEvaluation

    snapshots = []

    def evaluate(model):
        snapshots.append({k: v.clone() for k, v in model.policy.state_dict().items()})
        return {"e2e_mean": 0.0, "ttft_mean": 0.0, "return_mean": 0.0, figure: scores[len(snapshots) - 1]}

    curve = PeriodicEvaluation(evaluate, every=2, keep_best=figure)
    model = KLPPO("MlpPolicy", "CartPole-v1", **{**FAST, "learning_rate": 1e-2})
    model.learn(32 * 5, callback=curve)
    assert curve.best_point == best
    kept, last = model.policy.state_dict(), snapshots[-1]
    assert all((kept[k] == snapshots[best][k]).all() for k in kept)
    assert best == 3 or any((kept[k] != last[k]).any() for k in kept)  # training moved the policy


def test_keep_best_names_a_curve_figure():
    from sb3_klppo.callbacks import PeriodicEvaluation

    with pytest.raises(ValueError, match="keep_best"):
        PeriodicEvaluation(lambda model: {}, every=1, keep_best="score")
