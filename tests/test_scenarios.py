"""Registered scenarios, training traffic randomisation and the output-length predictor."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from vidur_env.cli import main
from vidur_env.config import ConfigError
from vidur_env.env import VidurRoutingEnv
from vidur_env.evaluation import evaluate
from vidur_env.scenarios import SCENARIOS, TrafficRange, named_scenario, registered_scenario
from vidur_env.simulation import cluster_capacity, run_simulation
from vidur_env.workload import WorkloadConfig, generate_requests


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_registered_scenario_runs_an_episode_with_its_training_traffic(name):
    env = VidurRoutingEnv(**registered_scenario(name).env_kwargs(training=True), num_requests=40)
    obs, _ = env.reset(seed=0)
    done, steps = False, 0
    while not done:
        obs, _, done, _, info = env.step(steps % env.num_replicas)
        steps += 1
    assert steps == 40 and info["metrics"]["num_requests"] == 40 and env.observation_space.contains(obs)


def test_a_registered_name_brings_its_observation_settings_unless_given():
    assert VidurRoutingEnv(scenario="stale1000", num_requests=5).refresh_s == 1.0
    assert VidurRoutingEnv(scenario="stale1000", num_requests=5, obs_refresh_ms=0).refresh_s == 0.0
    assert VidurRoutingEnv(scenario="prefix", num_requests=5).cache_view == "precise"
    assert VidurRoutingEnv(scenario="prefix", num_requests=5, cache_view=None).cache_view is None
    assert VidurRoutingEnv(scenario=named_scenario("prefix"), num_requests=5).cache_view is None


def test_the_heterogeneous_scenarios_have_the_replicas_the_issue_names():
    hetero = [(r.device, r.tensor_parallel) for r in named_scenario("hetero").cluster.replica_configs]
    mixed = [(r.device, r.tensor_parallel) for r in named_scenario("mixed_tp").cluster.replica_configs]
    assert hetero == [("a100", 1), ("a100", 1), ("h100", 1), ("h100", 1)]
    assert mixed == [("a100", 1), ("a100", 1), ("a100", 2), ("h100", 2)]
    assert named_scenario("bursty").workload.arrival == "gamma" and named_scenario("bursty").workload.cv == 4.0


def test_simulate_refuses_a_stale_scenario_and_names_the_command_that_models_it(capsys):
    assert main(["simulate", "--scenario", "stale1000", "--num-requests", "10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "evaluate --scenario stale1000" in err


def test_evaluate_command_applies_the_scenarios_staleness(tmp_path, capsys):
    args = ["evaluate", "--scenario", "stale1000", "--num-requests", "30", "--episodes", "1", "--routers",
            "least_work_left", "--output-dir", str(tmp_path)]
    assert main(args) == 0
    stale = json.loads((tmp_path / "evaluation.json").read_text())
    assert main([*args, "--obs-refresh-ms", "0"]) == 0
    fresh = json.loads((tmp_path / "evaluation.json").read_text())
    capsys.readouterr()
    assert stale["rows"]["least_work_left"]["ttft_mean"] != fresh["rows"]["least_work_left"]["ttft_mean"]


def test_length_scales_apply_to_the_default_length_distribution():
    base = generate_requests(WorkloadConfig(num_requests=200), np.random.default_rng(0))
    scaled = generate_requests(WorkloadConfig(num_requests=200, prefill_scale=0.5, decode_scale=0.5),
                               np.random.default_rng(0))
    assert scaled.num_decode_tokens.sum() < 0.6 * base.num_decode_tokens.sum()
    assert scaled.num_prefill_tokens.min() >= 1


def test_training_traffic_draws_within_its_ranges_at_the_rate_the_drawn_load_means():
    traffic = TrafficRange(load=(0.6, 0.95), cv=(1.0, 4.0), length_scale=(0.7, 1.4))
    env = VidurRoutingEnv(num_replicas=2, num_requests=20, traffic=traffic)
    env.reset(seed=3)
    rng = np.random.default_rng(3)
    workload, load = traffic.draw(env.workload, env.scenario.load, rng)
    assert 0.6 <= load <= 0.95 and workload.arrival == "gamma" and 1.0 <= workload.cv <= 4.0
    assert 0.7 - 1e-9 <= workload.prefill_scale == workload.decode_scale <= 1.4 + 1e-9
    qps = load * cluster_capacity(env.cluster, workload, env.time_models)
    expected = generate_requests(replace(workload, qps=qps), rng)
    assert np.array_equal(env.requests.arrived_at, expected.arrived_at)


def test_training_traffic_is_reproducible_by_seed_and_varies_across_episodes():
    def last_arrivals(seed: int) -> list[float]:
        env = VidurRoutingEnv(num_replicas=2, num_requests=20, traffic={"load": [0.6, 0.95]})
        env.reset(seed=seed)
        times = [float(env.requests.arrived_at[-1])]
        for _ in range(3):
            env.reset()
            times.append(float(env.requests.arrived_at[-1]))
        return times
    assert last_arrivals(1) == last_arrivals(1) and len(set(last_arrivals(1))) == 4


@pytest.mark.parametrize("traffic, match", [
    ({"load": [0.9, 0.6]}, "traffic.load: must be null or"), ({"cv": [0, 2]}, "traffic.cv: must be null or"),
    ({"loads": [0.6, 0.9]}, "traffic: unknown key"), ("wide", "traffic: expected a TrafficRange"),
    ({"devices": ["a100", "b200"]}, "traffic.devices: unknown device 'b200'"),
    ({"devices": []}, "traffic.devices: must be null or a non-empty list"),
])
def test_bad_traffic_ranges_are_named(traffic, match):
    with pytest.raises(ConfigError, match=match):
        VidurRoutingEnv(num_replicas=2, num_requests=5, traffic=traffic)


DEVICES = {"devices": ["a100", "h100"]}


def test_device_draws_put_each_replica_on_a_drawn_device_reproducibly():
    def mixes(seed: int) -> list[tuple[str, ...]]:
        env = VidurRoutingEnv(scenario="hetero", num_requests=30, traffic=DEVICES)
        drawn = []
        for k in range(8):
            obs, _ = env.reset(seed=seed if k == 0 else None)
            devices = tuple(spec.device for spec in env.cluster.replica_configs)
            assert [r.time_model for r in env.simulator.replicas] == env.time_models
            speed = dict(zip(devices, obs[:, 7]))  # relative_speed: one value per device, 1 on the fastest
            assert len(speed) == len(set(devices)) and max(speed.values()) == 1.0
            assert len(speed) == 1 or speed["h100"] > speed["a100"]
            drawn.append(devices)
        return drawn
    first = mixes(4)
    assert first == mixes(4) and len(set(first)) > 3
    assert {d for mix in first for d in mix} == {"a100", "h100"}


def test_device_draws_set_the_arrival_rate_from_the_drawn_cluster_s_capacity():
    env = VidurRoutingEnv(scenario="hetero", num_requests=30,
                          traffic={"load": [0.9, 0.9], "cv": None, "length_scale": None, **DEVICES})
    rates = set()
    for seed in range(6):
        env.reset(seed=seed)
        capacity = cluster_capacity(env.cluster, env.workload, env.time_models)
        assert env.episode.workload.qps == pytest.approx(0.9 * capacity, rel=1e-12)
        rates.add(round(env.episode.workload.qps, 9))
    assert len(rates) > 1


def test_a_drawn_device_without_a_time_model_is_named(shared_data, tmp_path):
    profiling = shared_data / "profiling"
    for part in ("compute/a100", "network/a100_dgx"):
        (tmp_path / part).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / part).symlink_to(profiling / part)
    VidurRoutingEnv(num_replicas=2, num_requests=5, time_model="profiled", profiling_dir=str(tmp_path),
                    profile_fit="interpolate")
    with pytest.raises(ConfigError, match="traffic.devices: no time model for a drawn device: .*h100"):
        VidurRoutingEnv(num_replicas=2, num_requests=5, time_model="profiled", profiling_dir=str(tmp_path),
                        profile_fit="interpolate", traffic=DEVICES)


def test_a_range_that_cannot_vary_the_workload_is_refused():
    with pytest.raises(ConfigError, match="traffic.cv: only Poisson or Gamma"):
        VidurRoutingEnv(scenario="prefix", num_requests=5, traffic={"cv": [1, 2]})
    with pytest.raises(ConfigError, match="traffic.load: the workload's arrivals are 'trace'"):
        VidurRoutingEnv(trace="sample", num_requests=5, traffic={"load": [0.6, 0.9], "cv": None,
                                                                 "length_scale": None})


def test_the_noisy_predictor_is_off_by_its_error_and_reproducible():
    def outputs(**kwargs):
        env = VidurRoutingEnv(num_replicas=2, num_requests=300, **kwargs)
        env.reset(seed=5)
        return env._output, env.requests.num_decode_tokens
    oracle, truth = outputs(output_predictor="oracle")
    noisy, _ = outputs(output_predictor="noisy", predictor_error=0.5)
    assert np.array_equal(oracle, truth) and np.array_equal(noisy, outputs(output_predictor="noisy")[0])
    log_error = np.log(noisy / truth)
    assert 0.35 < np.std(log_error) < 0.65 and abs(np.mean(noisy) / np.mean(truth) - 1) < 0.15
    exact, _ = outputs(output_predictor="noisy", predictor_error=0.0)
    assert np.array_equal(exact, truth)


@pytest.mark.parametrize("kwargs, match", [
    ({"output_predictor": "learned"}, "output_predictor: must be one of none, oracle, noisy"),
    ({"output_predictor": "noisy", "predictor_error": -1}, "predictor_error: must be a finite number >= 0"),
])
def test_bad_predictor_settings_are_named(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        VidurRoutingEnv(num_replicas=2, num_requests=5, **kwargs)


def test_the_harness_runs_cache_aware_routers_on_the_live_simulator_like_simulate():
    scenario = named_scenario("prefix")
    result = evaluate({"scenario": scenario, "num_requests": 120}, ["dynamo_kv", "consistent_hash"], episodes=1,
                      seed=4, lower_bound=False)
    short = replace(scenario, workload=replace(scenario.workload, num_requests=120))
    for name in ("dynamo_kv", "consistent_hash"):
        direct = run_simulation(short, router=name, seed=4)
        assert result.rows[name]["e2e_mean"] == pytest.approx(direct.metrics["request_e2e_time"]["mean"])


def test_live_routers_are_refused_with_stale_observations():
    with pytest.raises(ConfigError, match="decides on the live simulator"):
        evaluate({"scenario": "stale100", "num_requests": 10}, ["sglang_cache_aware"], episodes=1)


def test_the_lower_bound_counts_reachable_cache_hits_and_no_router_beats_it_on_prefix():
    routers = ["round_robin", "vllm_prefix_precise", "aibrix_prefix"]
    result = evaluate({"scenario": "prefix", "num_requests": 200}, routers, episodes=2, seed=3)
    bound = result.latencies["lower_bound"]
    for name in routers:
        assert np.all(result.latencies[name]["ttft"] >= bound["ttft"] - 1e-9), name  # per request; equal when alone
        for figure in ("e2e_mean", "e2e_p99", "ttft_mean", "ttft_p99"):
            assert result.rows[name][figure] > result.rows["lower_bound"][figure], (name, figure)
    # the bound starts each prompt past its reachable cached prefix: below the whole prompt's
    env = VidurRoutingEnv(scenario="prefix", num_requests=200)
    env.reset(seed=3)
    cached, _ = env.isolated_latencies(env.requests)
    whole, _ = env.episode.isolated_latencies(env.requests, cached=False)
    assert np.all(cached <= whole) and np.mean(cached) < 0.8 * np.mean(whole)


def test_keyed_traffic_keeps_the_prefix_keys_of_a_drawn_fraction_of_requests_reproducibly():
    def kept(seed: int) -> list[bool]:
        env = VidurRoutingEnv(scenario="prefix", num_requests=300, traffic={"load": None, "cv": None,
                                                                           "length_scale": None, "keyed": [0.2, 0.4]})
        env.reset(seed=seed)
        return [keys is not None for keys in env.requests.block_hashes]
    assert kept(3) == kept(3) and kept(3) != kept(4)
    assert 0.1 < np.mean(kept(3)) < 0.5
    nominal = VidurRoutingEnv(scenario="prefix", num_requests=300)
    nominal.reset(seed=3)
    assert all(keys is not None for keys in nominal.requests.block_hashes)


@pytest.mark.parametrize("traffic, match", [
    ({"keyed": [0.5, 1.5]}, "traffic.keyed: must be null or \\[low, high\\] with 0 <= low <= high <= 1"),
    ({"keyed": [0.0, 1.0]}, "traffic.keyed: only session or trace requests carry prefix keys"),
])
def test_bad_keyed_ranges_are_named(traffic, match):
    with pytest.raises(ConfigError, match=match):
        VidurRoutingEnv(num_replicas=2, num_requests=5, traffic=traffic)


def test_training_traffic_keeps_a_given_arrival_rate_when_it_draws_no_load():
    env = VidurRoutingEnv(num_replicas=2, num_requests=20, qps=5.0,
                          traffic={"load": None, "cv": None, "length_scale": [0.7, 1.4]})
    env.reset(seed=0)
    fixed = VidurRoutingEnv(num_replicas=2, num_requests=20, qps=5.0)
    fixed.reset(seed=0)
    assert env.scenario.load is None and env.requests.arrived_at[-1] > 0
    assert env.requests.num_decode_tokens.sum() != fixed.requests.num_decode_tokens.sum()
