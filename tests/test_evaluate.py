"""The evaluation harness and ``python -m vidur_env evaluate`` end to end on tiny workloads."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from vidur_env.cli import main
from vidur_env.cluster import ClusterSimulator, build_time_models
from vidur_env.config import ClusterConfig, ReplicaConfig
from vidur_env.evaluation import LOWER_BOUND, EvaluationError, evaluate
from vidur_env.metrics import RequestMetrics
from vidur_env.reward import isolated_latencies

TINY = {"num_replicas": 2, "num_requests": 40}
ROW_KEYS = {"e2e_mean", "e2e_p50", "e2e_p99", "ttft_mean", "ttft_p50", "ttft_p99", "throughput", "restarts"}


@pytest.fixture(scope="module")
def result():
    return evaluate(TINY, ["lor", "jsq", "random"], episodes=2, seed=7)


def test_rows_for_every_policy_and_the_lower_bound(result):
    assert list(result.rows) == ["lor", "jsq", "random", LOWER_BOUND]
    for row in result.rows.values():
        assert ROW_KEYS <= set(row) and row["num_requests"] == 80 and row["episodes"] == 2
        assert 0 < row["e2e_p50"] <= row["e2e_p99"] and 0 < row["ttft_mean"] <= row["e2e_mean"]
    bound = result.rows[LOWER_BOUND]
    assert all(bound["e2e_mean"] < row["e2e_mean"] for name, row in result.rows.items() if name != LOWER_BOUND)
    assert bound["restarts"] == 0 and bound["return_mean"] is None


def test_common_random_numbers_and_determinism(result):
    alone = evaluate(TINY, ["jsq"], episodes=2, seed=7)
    assert alone.rows["jsq"] == result.rows["jsq"]
    assert alone.rows[LOWER_BOUND] == result.rows[LOWER_BOUND]
    again = evaluate(TINY, ["random"], episodes=2, seed=7)
    assert again.rows["random"] == result.rows["random"]
    other = evaluate(TINY, ["jsq"], episodes=2, seed=8)
    assert other.rows["jsq"] != result.rows["jsq"]


def test_table_json_and_plot(result, tmp_path):
    table = result.table()
    assert all(name in table for name in result.rows) and "E2E p99" in table
    result.to_json(tmp_path / "e.json")
    data = json.loads((tmp_path / "e.json").read_text())
    assert data["rows"]["jsq"]["e2e_mean"] == pytest.approx(result.rows["jsq"]["e2e_mean"])
    assert data["settings"]["episodes"] == 2
    result.plot_latency_cdf(tmp_path / "cdf.png")
    assert (tmp_path / "cdf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("scheduler", ["sarathi", "vllm", "orca"])
def test_lower_bound_is_the_latency_of_a_request_served_alone(scheduler):
    cluster = ClusterConfig(num_replicas=1, replica=ReplicaConfig(scheduler=scheduler))
    models = build_time_models(cluster)
    for prompt, output in ((1, 1), (513, 3), (1000, 40), (3000, 200)):
        requests = SimpleNamespace(arrived_at=np.array([0.25]), num_prefill_tokens=np.array([prompt]),
                                   num_decode_tokens=np.array([output]))
        sim = ClusterSimulator(cluster, requests, time_models=models)
        sim.run(lambda _sim, _rid: 0)
        m = RequestMetrics.from_simulator(sim)
        ttft, e2e = isolated_latencies(cluster.replica_configs, models, 4096, np.array([prompt]), np.array([output]))
        assert ttft[0] == pytest.approx(m.prefill_e2e_time[0], rel=1e-9)
        assert e2e[0] == pytest.approx(m.request_e2e_time[0], rel=1e-9)


def test_lower_bound_takes_the_fastest_replica_of_a_heterogeneous_cluster():
    cluster = ClusterConfig(replicas=(ReplicaConfig(device="a100"), ReplicaConfig(device="h100")))
    models = build_time_models(cluster)
    prompts, outputs = np.array([500, 2000]), np.array([50, 10])
    _, both = isolated_latencies(cluster.replica_configs, models, 4096, prompts, outputs)
    _, a100 = isolated_latencies(cluster.replica_configs[:1], models[:1], 4096, prompts, outputs)
    _, h100 = isolated_latencies(cluster.replica_configs[1:], models[1:], 4096, prompts, outputs)
    np.testing.assert_array_equal(both, np.minimum(a100, h100))
    assert (h100 < a100).all()


def test_a_model_is_evaluated_on_the_same_workloads():
    from stable_baselines3 import PPO

    from vidur_env.env import VidurRoutingEnv

    model = PPO("MlpPolicy", VidurRoutingEnv(**TINY), n_steps=16, batch_size=16, seed=0, device="cpu")
    out = evaluate(TINY, ["jsq"], model=model, model_name="untrained", episodes=1)
    assert list(out.rows) == ["jsq", "untrained", LOWER_BOUND]
    assert out.rows["untrained"]["num_requests"] == 40
    with pytest.raises(EvaluationError, match="shape"):
        evaluate({**TINY, "output_predictor": "oracle"}, [], model=model, episodes=1)


@pytest.mark.parametrize("bad, message", [
    ({"routers": ["jsq", "nope"]}, "nope"),
    ({"routers": ["jsq"], "episodes": 0}, "episodes"),
    ({"routers": []}, "nothing to evaluate"),
])
def test_bad_evaluation_input_is_named(bad, message):
    with pytest.raises(EvaluationError, match=message):
        evaluate(TINY, **bad)


def test_evaluate_command_end_to_end_with_a_saved_model(tmp_path, capsys):
    from stable_baselines3 import PPO

    from vidur_env.env import VidurRoutingEnv

    PPO("MlpPolicy", VidurRoutingEnv(**TINY), n_steps=16, batch_size=16, seed=0, device="cpu").save(tmp_path / "router.zip")
    out_dir = tmp_path / "out"
    code = main(["evaluate", "--routers", "lor,jsq", "--agent", str(tmp_path / "router.zip"), "--episodes", "1",
                 "--seed", "3", "--replicas", "2", "--episode-requests", "30", "--output-dir", str(out_dir)])
    printed = capsys.readouterr().out
    assert code == 0
    for name in ("lor", "jsq", "router", LOWER_BOUND):
        assert name in printed
    data = json.loads((out_dir / "evaluation.json").read_text())
    assert set(data["rows"]) == {"lor", "jsq", "router", LOWER_BOUND}
    assert data["rows"]["jsq"]["num_requests"] == 30
    assert (out_dir / "latency_cdf.png").stat().st_size > 1000


@pytest.mark.parametrize("argv, message", [
    (["--routers", "lor,shortest"], "unknown router(s) shortest"),
    (["--agent", "missing.zip"], "model file not found"),
    (["--agent", __file__, "--algorithm", "stable_baselines3"], "algorithm 'stable_baselines3': expected MODULE:CLASS"),
    (["--agent", __file__, "--algorithm", "stable_baselines3:PPQ"], "stable_baselines3 has no PPQ"),
    (["--agent", __file__, "--algorithm", "no_such_rl_lib:PPO"], "cannot import no_such_rl_lib"),
])
def test_evaluate_command_rejects_bad_input_with_exit_2(argv, message, tmp_path, capsys):
    code = main(["evaluate", "--replicas", "2", "--episode-requests", "8", "--output-dir", str(tmp_path)] + argv)
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """A KLPPO zip with a reference and a MaskablePPO zip, both on the TINY scenario."""
    from sb3_contrib import MaskablePPO

    from sb3_klppo import KLPPO
    from sb3_klppo.maskable import MaskableReplicaSetPolicy
    from vidur_env.env import VidurRoutingEnv

    folder = tmp_path_factory.mktemp("models")
    small = dict(n_steps=16, batch_size=16, seed=0, device="cpu", policy_kwargs={"net_arch": [8]})
    klppo = KLPPO("ReplicaSetPolicy", VidurRoutingEnv(**TINY), **small)
    klppo.set_reference_policy()
    klppo.save(folder / "klppo.zip")
    MaskablePPO(MaskableReplicaSetPolicy, VidurRoutingEnv(**TINY), **small).save(folder / "masked.zip")
    return folder


def test_load_model_takes_any_algorithm_class_by_object_or_name(saved_models):
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import PPO

    from sb3_klppo import KLPPO
    from vidur_env.evaluation import load_model

    assert type(load_model(saved_models / "klppo.zip")) is PPO  # the default: a KLPPO zip is a PPO zip
    assert type(load_model(saved_models / "masked.zip")) is MaskablePPO  # masks honoured by default
    by_name = load_model(saved_models / "klppo.zip", "sb3_klppo:KLPPO")
    assert type(by_name) is KLPPO and by_name.reference_policy is not None
    assert type(load_model(saved_models / "klppo.zip", KLPPO)) is KLPPO
    with pytest.raises(EvaluationError, match="cannot load .* as an SB3 model .*MaskablePPO"):
        load_model(saved_models / "klppo.zip", MaskablePPO)


def test_evaluate_command_loads_with_the_named_algorithm(saved_models, tmp_path, capsys):
    code = main(["evaluate", "--routers", "lor", "--agent", str(saved_models / "klppo.zip"), "--algorithm",
                 "sb3_klppo:KLPPO", "--episodes", "1", "--replicas", "2", "--episode-requests", "12",
                 "--output-dir", str(tmp_path)])
    assert code == 0 and "klppo" in capsys.readouterr().out


@pytest.mark.parametrize("df, quantile", [(1, 12.7062047), (2, 4.3026527), (4, 2.7764451), (9, 2.2621572),
                                          (30, 2.0422725), (100, 1.9839715)])
def test_t_quantile_matches_the_published_table(df, quantile):
    from vidur_env.student_t import student_t_quantile

    assert student_t_quantile(0.975, df) == pytest.approx(quantile, abs=1e-6)
    assert student_t_quantile(0.025, df) == pytest.approx(-quantile, abs=1e-6)


def test_paired_difference_calls_an_interval_over_zero_a_tie():
    from vidur_env.paired import paired_difference

    noisy = paired_difference([1.00, 0.98, 1.01], [1.0, 1.0, 1.0])  # -0.33% with a wide interval
    assert noisy.verdict == "tie" and noisy.mean_pct == pytest.approx(-1 / 3)
    assert noisy.half_width_pct == pytest.approx(4.3026527 * np.std([0, -2, 1], ddof=1) / np.sqrt(3), rel=1e-6)
    assert paired_difference([0.9, 0.91, 0.89], [1.0, 1.0, 1.0]).verdict == "better"
    assert paired_difference([1.2, 1.21], [1.0, 1.0]).verdict == "worse"
    single = paired_difference([0.5], [1.0])
    assert single.verdict == "tie" and "no interval" in str(single)


def test_every_policy_keeps_its_per_episode_figures(result, tmp_path):
    from vidur_env.evaluation import EPISODE_FIGURES

    for name in ("lor", "jsq", "random", LOWER_BOUND):
        figures = result.episodes[name]
        assert set(figures) == set(EPISODE_FIGURES) and all(len(v) == 2 for v in figures.values())
    # The pooled row and the episodes come from the same requests.
    assert sum(result.episodes["jsq"]["restarts"]) == result.rows["jsq"]["restarts"]
    assert np.mean(result.episodes["jsq"]["return"]) == pytest.approx(result.rows["jsq"]["return_mean"])
    comparison = result.compare("jsq", "random", "e2e_mean")
    ratios = np.array(result.episodes["jsq"]["e2e_mean"]) / np.array(result.episodes["random"]["e2e_mean"])
    assert comparison.mean_pct == pytest.approx(100 * (ratios.mean() - 1)) and comparison.episodes == 2
    result.to_json(tmp_path / "e.json")
    saved = json.loads((tmp_path / "e.json").read_text())
    assert saved["episodes"]["lor"]["e2e_mean"] == result.episodes["lor"]["e2e_mean"]
    assert saved["episodes"][LOWER_BOUND]["return"] == [None, None]
    assert "replicas" in saved["settings"]["scenario"]


def test_progress_is_told_every_episodes_decisions():
    told = []
    evaluate(TINY, ["jsq", "lor"], episodes=2, progress=told.append)
    assert told == [40] * 4


def test_evaluate_command_takes_a_named_scenario_and_flags_over_it(tmp_path, capsys):
    code = main(["evaluate", "--scenario", "prefix", "--replicas", "2", "--routers", "round_robin", "--episodes", "1",
                 "--episode-requests", "24", "--output-dir", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    settings = json.loads((tmp_path / "evaluation.json").read_text())["settings"]
    assert settings["scenario"].startswith("2 replicas: llama-3.1-8b on a100")
    assert "session lengths" in settings["scenario"] and settings["episode_requests"] == 24


def test_an_agent_zip_given_as_the_llm_is_named_as_such(capsys):
    """--model is the served LLM in every command; a zip there gets advice to use --agent."""
    assert main(["evaluate", "--model", "runs/x_1/model.zip", "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--model runs/x_1/model.zip" in err and "--agent" in err
