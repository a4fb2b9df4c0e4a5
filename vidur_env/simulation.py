"""A scenario (cluster + workload + load level) and running it with a router end to end."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from vidur_env.cluster import ClusterSimulator, SimulationError, build_time_models
from vidur_env.config import ClusterConfig, ConfigError, ReplicaConfig, setting
from vidur_env.hardware import get_model, plan_memory
from vidur_env.metrics import RequestMetrics, aggregate_metrics
from vidur_env.routers import Router, make_router
from vidur_env.time_model import ExecutionTimeModel
from vidur_env.workload import Requests, WorkloadConfig, generate_requests, trace_rows

CAPACITY_PROBE_REQUESTS = 256
"""Requests in the saturation run that measures a replica's capacity (fewer when the lengths
come from a shorter trace)."""


class CapacityProbeError(SimulationError):
    """Measuring the cluster's capacity (to turn ``load`` into an arrival rate) failed."""


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
        """Raise :class:`ConfigError` for the first unusable setting, naming it; this includes
        the checks that need both the cluster and the workload (context length, memory)."""
        self.cluster.validate()
        self.workload.validate()
        if self.load is not None and not (isinstance(self.load, (int, float)) and 0.0 < self.load < float("inf")):
            raise ConfigError(f"scenario.load: must be a positive finite fraction of capacity, got {self.load!r}")
        for where, spec in self._distinct_replicas():
            self._check_context(where, spec)
            self._check_memory(where, spec)

    def _distinct_replicas(self) -> list[tuple[str, ReplicaConfig]]:
        """(field path, spec) of each distinct replica configuration, first occurrence first."""
        specs = self.cluster.replica_configs
        if self.cluster.replicas is None:
            return [("cluster.replica", specs[0])]
        return [(f"cluster.replicas[{i}]", spec) for i, spec in enumerate(specs) if spec not in specs[:i]]

    def _check_context(self, where: str, spec: ReplicaConfig) -> None:
        """``max_tokens`` may not exceed the model's context length unless the user opts in."""
        model = get_model(spec.model)
        max_tokens = self.workload.max_tokens
        if max_tokens > model.max_context and not self.workload.allow_beyond_context:
            raise ConfigError(
                f"WorkloadConfig.max_tokens: {setting('max_tokens', max_tokens)} exceeds the context length of "
                f"{model.name} ({model.max_context} tokens, {where}.model); lower it, or simulate requests "
                f"the real model cannot serve with {setting('allow_beyond_context', True)}"
            )

    def _check_memory(self, where: str, spec: ReplicaConfig) -> None:
        """The model's weights plus one ``max_tokens`` request must fit in the replica's memory."""
        try:
            plan_memory(spec.model, spec.device, spec.tensor_parallel, max_tokens=self.workload.max_tokens,
                        batch_size_cap=spec.batch_size_cap, memory_margin_fraction=spec.memory_margin_fraction)
        except ValueError as error:
            raise ConfigError(
                f"{where}: {error}; raise {setting('tensor_parallel')} or lower {setting('max_tokens')}"
            ) from None


def replica_capacity(spec: ReplicaConfig, time_model: ExecutionTimeModel, workload: WorkloadConfig) -> float:
    """Requests per second one replica completes when it is never short of work.

    Measured by simulating a saturated replica (every request queued at t=0) on a fixed
    draw of the workload's lengths, so it includes batching, chunking and memory limits.
    A failure is reported as the measurement's, not as a problem of the user's requests.
    """
    size = CAPACITY_PROBE_REQUESTS
    if workload.lengths == "trace":
        size = min(size, trace_rows(workload))
    probe = replace(workload, arrival="static", num_requests=size)
    requests = generate_requests(probe, np.random.default_rng(12345))
    sim = ClusterSimulator(ClusterConfig(num_replicas=1, replica=spec), requests,
                           max_tokens=workload.max_tokens, time_models=[time_model])
    try:
        sim.run(lambda _sim, _rid: 0)
    except SimulationError as error:
        raise CapacityProbeError(
            f"capacity measurement failed, so {setting('load')} cannot be turned into an arrival rate: "
            f"one {spec.model} replica ({spec.device}, TP{spec.tensor_parallel}, {spec.scheduler}) given "
            f"{size} requests drawn from the workload at once could not serve them ({error}); "
            f"give the arrival rate directly with {setting('qps')}"
        ) from None
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
                   requests: Requests | None = None,
                   time_models: list[ExecutionTimeModel] | None = None) -> SimulationResult:
    """Generate the workload (or use ``requests``), route it, drain, and compute the metrics.

    ``time_models`` (one per replica) replace the scenario's time source, e.g. a benchmark
    timing iterations with another simulator's own predictions.

    Besides Vidur's metrics, the result reports what the run changed or guessed:
    ``requests_cut_to_max_tokens`` (requests shortened to fit ``max_tokens``) and
    ``out_of_grid_lookups`` (profiled times extrapolated beyond the profiling grid).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"{setting('seed')}: must be an integer >= 0, got {seed!r}")
    scenario.validate()
    if time_models is None:
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
    metrics["requests_cut_to_max_tokens"] = getattr(requests, "num_cut", 0)
    distinct_models = {id(model): model for model in time_models}.values()
    metrics["out_of_grid_lookups"] = sum(model.out_of_grid_lookups for model in distinct_models)
    return SimulationResult(sim, per_request, metrics)
