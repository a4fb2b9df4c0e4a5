"""A scenario (cluster + workload + load level) and running it with a router end to end."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from vidur_env.cluster import ClusterSimulator, build_time_models
from vidur_env.config import ClusterConfig, ConfigError, ReplicaConfig
from vidur_env.metrics import RequestMetrics, aggregate_metrics
from vidur_env.routers import Router, make_router
from vidur_env.time_model import ExecutionTimeModel
from vidur_env.workload import Requests, WorkloadConfig, generate_requests

CAPACITY_PROBE_REQUESTS = 256
"""Requests in the saturation run that measures a replica's capacity."""


@dataclass(frozen=True)
class Scenario:
    """What is simulated: the cluster, the workload and, optionally, the load level.

    With ``load`` set and a Poisson or Gamma arrival process, the arrival rate is
    ``load`` times the cluster's measured capacity for this workload's request lengths
    (see :func:`cluster_capacity`), so "85% load" means the same thing on any cluster.
    """

    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    load: float | None = 0.85

    def validate(self) -> None:
        self.cluster.validate()
        self.workload.validate()
        if self.load is not None and not 0.0 < self.load:
            raise ConfigError(f"scenario.load: must be a positive fraction of capacity, got {self.load!r}")


def replica_capacity(spec: ReplicaConfig, time_model: ExecutionTimeModel, workload: WorkloadConfig) -> float:
    """Requests per second one replica completes when it is never short of work.

    Measured by simulating a saturated replica (every request queued at t=0) on a fixed
    draw of the workload's lengths, so it includes batching, chunking and memory limits.
    """
    probe = replace(workload, arrival="static", num_requests=CAPACITY_PROBE_REQUESTS)
    requests = generate_requests(probe, np.random.default_rng(12345))
    sim = ClusterSimulator(ClusterConfig(num_replicas=1, replica=spec), requests,
                           max_tokens=workload.max_tokens, time_models=[time_model])
    sim.run(lambda _sim, _rid: 0)
    return len(requests) / max(sim.table.completed_at)


def cluster_capacity(cluster: ClusterConfig, workload: WorkloadConfig,
                     time_models: list[ExecutionTimeModel] | None = None) -> float:
    """Sum of the replicas' saturated throughputs (requests/s)."""
    models = time_models or build_time_models(cluster)
    cache: dict[tuple[ReplicaConfig, int], float] = {}
    total = 0.0
    for spec, model in zip(cluster.replica_configs, models):
        key = (spec, id(model))
        if key not in cache:
            cache[key] = replica_capacity(spec, model, workload)
        total += cache[key]
    return total


def resolve_workload(scenario: Scenario, time_models: list[ExecutionTimeModel]) -> WorkloadConfig:
    """The workload with its arrival rate fixed from the load level, when one is given."""
    workload = scenario.workload
    if scenario.load is None or workload.arrival not in ("poisson", "gamma"):
        return workload
    qps = scenario.load * cluster_capacity(scenario.cluster, workload, time_models)
    return replace(workload, qps=qps)


@dataclass
class SimulationResult:
    simulator: ClusterSimulator
    requests: RequestMetrics
    metrics: dict[str, Any]


def run_simulation(scenario: Scenario, router: str | Router = "round_robin", seed: int = 0,
                   requests: Requests | None = None) -> SimulationResult:
    """Generate the workload (or use ``requests``), route it, drain, and compute the metrics."""
    scenario.validate()
    time_models = build_time_models(scenario.cluster)
    workload = resolve_workload(scenario, time_models)
    rng = np.random.default_rng(seed)
    if requests is None:
        requests = generate_requests(workload, rng)
    sim = ClusterSimulator(scenario.cluster, requests, max_tokens=workload.max_tokens, time_models=time_models)
    policy = make_router(router) if isinstance(router, str) else router
    policy.reset(sim.num_replicas, rng)
    sim.run(policy)
    per_request = RequestMetrics.from_simulator(sim)
    metrics = aggregate_metrics(sim, per_request)
    metrics["arrival_rate"] = workload.qps if workload.arrival in ("poisson", "gamma") else None
    return SimulationResult(sim, per_request, metrics)
