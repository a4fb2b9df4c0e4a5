"""Scenario checks that need the cluster and the workload together, the capacity probe's
errors, what a run reports about its own changes to the input, and Vidur's per-request CSV."""
from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from vidur_env.cluster import SimulationError
from vidur_env.config import ClusterConfig, ConfigError, ReplicaConfig
from vidur_env.simulation import CapacityProbeError, Scenario, run_simulation
from vidur_env.time_model import OutOfGridError
from vidur_env.traces import trace_path
from vidur_env.workload import WorkloadConfig

REPLAY = str(Path(__file__).parent / "fixtures" / "vidur_replay.csv")

VIDUR_REQUEST_METRICS_HEADER = [
    "Request Id", "request_e2e_time", "request_e2e_time_normalized", "request_scheduling_delay", "prefill_e2e_time",
    "prefill_time_execution_plus_preemption", "prefill_time_execution_plus_preemption_normalized",
    "decode_time_execution_plus_preemption_normalized", "request_inter_arrival_delay", "request_num_tokens",
    "request_num_prefill_tokens", "request_num_decode_tokens", "request_pd_ratio", "request_num_restarts",
]
"""Vidur's request_metrics.csv columns (vidur/metrics/constants.py, in MetricsStore's order) that
this simulator computes; written out here rather than imported, so the test checks the names."""


def scenario(model: str = "llama-2-7b", tp: int = 1, **workload) -> Scenario:
    return Scenario(cluster=ClusterConfig(num_replicas=2, replica=ReplicaConfig(model=model, tensor_parallel=tp)),
                    workload=WorkloadConfig(num_requests=20, **workload), load=None)


@pytest.mark.parametrize("kwargs, message", [
    ({"tp": 3}, r"cluster\.replica\.tensor_parallel: .*not divisible by tp=3; choose a tensor_parallel"),
    ({"model": "llama-2-70b"}, r"cluster\.replica: .*leaves no room .*; raise tensor_parallel or lower max_tokens"),
    ({"max_tokens": 10_000_000}, r"max_tokens=10000000 exceeds the context length of .*Llama-2-7b-hf \(4096 "
                                 r"tokens.*allow_beyond_context=True"),
    ({"max_tokens": 10_000_000, "allow_beyond_context": True}, r"leaves no room .*max_tokens=10000000"),
    ({"model": "gpt-17"}, r"cluster\.replica\.model: unknown model 'gpt-17'"),
])
def test_scenarios_that_cannot_run_raise_config_errors_naming_the_field(kwargs, message):
    model_args = {k: kwargs.pop(k) for k in ("model", "tp") if k in kwargs}
    with pytest.raises(ConfigError, match=message):
        scenario(**model_args, **kwargs).validate()


def test_max_tokens_up_to_the_context_length_needs_no_opt_in():
    scenario("llama-3-8b", max_tokens=8192).validate()
    scenario("llama-2-7b", max_tokens=8192, allow_beyond_context=True).validate()


@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_a_bad_seed_is_a_config_error(seed):
    with pytest.raises(ConfigError, match="seed: must be an integer >= 0"):
        run_simulation(scenario(), seed=seed)


def test_a_failed_capacity_probe_says_so_and_suggests_qps():
    tiny_kv = Scenario(cluster=ClusterConfig(num_replicas=2, replica=ReplicaConfig(num_blocks=5)),
                       workload=WorkloadConfig(num_requests=50), load=0.85)
    with pytest.raises(CapacityProbeError, match=r"^capacity measurement failed, so load cannot be turned into an "
                                                 r"arrival rate: .*give the arrival rate directly with qps") as error:
        run_simulation(tiny_kv)
    assert isinstance(error.value, SimulationError)


def test_the_capacity_probe_fits_a_trace_shorter_than_its_usual_size():
    short = Scenario(cluster=ClusterConfig(num_replicas=2),
                     workload=WorkloadConfig(lengths="trace", trace=REPLAY, num_requests=5),
                     load=0.85)
    assert run_simulation(short).metrics["num_requests"] == 5


def test_a_run_reports_the_requests_it_cut_and_its_extrapolated_lookups():
    replay = WorkloadConfig(arrival="trace", lengths="trace", trace="sample", num_requests=None)
    metrics = run_simulation(Scenario(cluster=ClusterConfig(num_replicas=2), workload=replay, load=None)).metrics
    long_rows = (np.loadtxt(trace_path("sample"), delimiter=",", skiprows=1)[:, 1:].sum(axis=1) > 4096)
    assert metrics["requests_cut_to_max_tokens"] == int(long_rows.sum()) > 0
    assert metrics["out_of_grid_lookups"] == 0  # the builtin time model has no grid
    roomy = run_simulation(Scenario(cluster=ClusterConfig(num_replicas=2),
                                    workload=replace(replay, max_tokens=8192, allow_beyond_context=True), load=None))
    assert roomy.metrics["requests_cut_to_max_tokens"] == 0


@pytest.mark.needs_shared_data
def test_vidurs_profiles_run_by_default_and_count_their_off_grid_lookups(shared_data):
    cluster = ClusterConfig(num_replicas=2, time_model="profiled", profiling_dir=str(shared_data / "profiling"))
    replay = WorkloadConfig(arrival="trace", lengths="trace", trace="sample", num_requests=60)
    metrics = run_simulation(Scenario(cluster=cluster, workload=replay, load=None)).metrics
    assert metrics["num_requests"] == 60 and metrics["out_of_grid_lookups"] > 0
    with pytest.raises(OutOfGridError, match="outside the profiled range .*extrapolate=True"):
        run_simulation(Scenario(cluster=replace(cluster, extrapolate=False), workload=replay, load=None))


def test_vidur_csv_has_vidurs_header_and_values(tmp_path):
    replay = WorkloadConfig(arrival="trace", lengths="trace", trace=REPLAY, num_requests=None)
    result = run_simulation(Scenario(cluster=ClusterConfig(num_replicas=2), workload=replay, load=None))
    result.requests.write_csv(tmp_path / "r.csv")
    with open(tmp_path / "r.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == VIDUR_REQUEST_METRICS_HEADER
    assert [int(r["Request Id"]) for r in rows] == [0, 1, 2, 3, 4]
    assert [int(r["request_num_prefill_tokens"]) for r in rows] == [375, 3896, 1020, 7, 2048]
    assert [int(r["request_num_tokens"]) for r in rows] == [420, 4096, 1149, 8, 2560]
    assert rows[0]["request_inter_arrival_delay"] == "" and float(rows[2]["request_inter_arrival_delay"]) == 0.75
    assert float(rows[1]["request_pd_ratio"]) == 3896 / 200
    e2e = [float(r["request_e2e_time"]) for r in rows]
    np.testing.assert_allclose(e2e, result.requests.request_e2e_time)


def test_full_csv_layout_keeps_replica_ids_and_timestamps(tmp_path):
    result = run_simulation(scenario())
    result.requests.write_csv(tmp_path / "r.csv", "full")
    with open(tmp_path / "r.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert header[:3] == ["request_id", "replica_id", "arrived_at"] and "completed_at" in header
