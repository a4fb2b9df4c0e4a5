"""A scenario (cluster + workload + load level) and running it with a router end to end."""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from vidur_env.cluster import ClusterSimulator, SimulationError, build_time_models
from vidur_env.config import (
    ClusterConfig, ConfigError, ReplicaConfig, reject_unknown_keys, replica_config_from_dict, setting,
)
from vidur_env.hardware import get_model, plan_memory
from vidur_env.kv_cache import reachable_hit_tokens
from vidur_env.metrics import DEFAULT_CSV_LAYOUT, CsvStream, RequestMetrics, aggregate_metrics
from vidur_env.reward import Reward, isolated_latencies
from vidur_env.routers import DEFAULT_ROUTER, Router, make_router
from vidur_env.time_model import ExecutionTimeModel
from vidur_env.workload import Requests, WorkloadConfig, generate_requests, trace_rows

DEFAULT_LOAD = 0.85
"""The default load level: arrivals at 85% of the cluster's measured capacity."""
CSV_STREAM_REQUESTS = 16384
"""Requests routed between two writes of completed rows when streaming the per-request CSV."""
REFERENCE_SEED = 12345
"""Seed of the fixed workload draws a scenario is measured on (capacity probe, reward scale)."""
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
    load: float | None = DEFAULT_LOAD

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

    def resolve(self, time_models: list[ExecutionTimeModel] | None = None) -> ResolvedScenario:
        """Validate, build the replicas' time models (unless ``time_models`` replace them) and fix
        the arrival rate from the load level: the one place a scenario becomes runnable
        (``simulate``, ``evaluate`` and the env all come here)."""
        self.validate()
        if time_models is None:
            time_models = build_time_models(self.cluster)
        return ResolvedScenario(self, time_models, resolve_workload(self, time_models))


@dataclass(frozen=True)
class ResolvedScenario:
    """A validated scenario ready to run: its time models (one per replica) and its workload
    with the arrival rate fixed from the load level (:meth:`Scenario.resolve`)."""

    scenario: Scenario
    time_models: list[ExecutionTimeModel]
    workload: WorkloadConfig

    @property
    def cluster(self) -> ClusterConfig:
        return self.scenario.cluster

    def with_requests(self, num_requests: int | None) -> ResolvedScenario:
        """The same scenario drawing ``num_requests`` requests (None: a trace's every row)."""
        return replace(self, workload=replace(self.workload, num_requests=num_requests))

    def reference_requests(self) -> Requests:
        """The fixed workload draw (seed :data:`REFERENCE_SEED`) a default reward scale is measured on."""
        return generate_requests(self.workload, np.random.default_rng(REFERENCE_SEED))

    def simulator(self, requests: Requests, compact: bool = False) -> ClusterSimulator:
        """A fresh simulator of the cluster for ``requests`` (``compact``: its request table in
        typed arrays, see :class:`~vidur_env.cluster.ClusterSimulator`)."""
        return ClusterSimulator(self.cluster, requests, max_tokens=self.workload.max_tokens,
                                time_models=self.time_models, compact=compact)

    def isolated_latencies(self, requests: Requests, cached: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(TTFT, E2E) of each request served alone on its fastest replica: the no-queueing bound.
        Where replicas cache prefixes a prompt starts past every leading block an earlier request
        computed (:func:`~vidur_env.kv_cache.reachable_hit_tokens`), unless ``cached`` is False."""
        hits = None
        if cached and requests.block_hashes is not None:
            hits = np.array(reachable_hit_tokens(requests.num_prefill_tokens.tolist(), requests.block_hashes))
        return isolated_latencies(self.cluster.replica_configs, self.time_models, self.workload.max_tokens,
                                  requests.num_prefill_tokens, requests.num_decode_tokens, hits)

    def reward_scale(self, reward: type[Reward]) -> float:
        """``reward``'s default scale: the mean of its ``scale_by`` isolated latency over the
        reference draw, or 1 when it has none."""
        if reward.scale_by is None:
            return 1.0
        # whole prompts: a scale, kept apart from how much the draw's sessions reuse
        ttft, e2e = self.isolated_latencies(self.reference_requests(), cached=False)
        return float(np.mean(ttft if reward.scale_by == "ttft" else e2e))


# ---------------------------------------------------------------------------------------------
# The env's keyword vocabulary: structured configs, a registered name, flat shortcuts

CLUSTER_FIELDS = frozenset(f.name for f in fields(ClusterConfig)) - {"replica", "replicas"}
REPLICA_FIELDS = frozenset(f.name for f in fields(ReplicaConfig))
WORKLOAD_FIELDS = frozenset(f.name for f in fields(WorkloadConfig)) - {"num_requests"}
ALIASES = {"tp": "tensor_parallel"}


def scenario_from_kwargs(cluster: Any, workload: Any, load: Any, scenario: Scenario | None,
                         shortcuts: dict[str, Any], own_arguments: Sequence[str] = ()) -> Scenario:
    """The env's scenario from a scenario or structured configs, plus flat shortcuts
    (unknown names rejected, listing ``own_arguments``, the env's other arguments)."""
    shortcuts = {ALIASES.get(k, k): v for k, v in shortcuts.items()}
    unknown = sorted(set(shortcuts) - CLUSTER_FIELDS - REPLICA_FIELDS - WORKLOAD_FIELDS)
    if unknown:
        valid = sorted(CLUSTER_FIELDS | REPLICA_FIELDS | WORKLOAD_FIELDS | set(ALIASES))
        raise ConfigError(f"VidurRoutingEnv: unknown argument(s) {', '.join(unknown)}; the env's own arguments: "
                          f"{', '.join(own_arguments)}; scenario shortcuts: {', '.join(valid)}")
    if scenario is not None:
        if cluster is not None or workload is not None or load != "auto":
            raise ConfigError("VidurRoutingEnv: pass either scenario or cluster/workload/load, not both")
        cluster, workload, load = scenario.cluster, scenario.workload, scenario.load
    cluster = apply_cluster_shortcuts(config_from(cluster, ClusterConfig, "cluster", nested_replicas), shortcuts)
    workload = apply_workload_shortcuts(config_from(workload, WorkloadConfig, "workload"), shortcuts)
    if load == "auto":
        load = None if "qps" in shortcuts else DEFAULT_LOAD
    if load is not None and (isinstance(load, bool) or not isinstance(load, (int, float))):
        raise ConfigError(f"VidurRoutingEnv.load: must be a number, None or 'auto', got {load!r}")
    return Scenario(cluster=cluster, workload=workload, load=load)


def config_from(value: Any, cls: type, where: str, nested: Callable[[dict], dict] = dict) -> Any:
    """A ``cls`` config from itself, None (the defaults) or a dict of its fields (unknown keys
    rejected; ``nested`` turns the dict's nested dicts into their configs)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a {cls.__name__} or a dict, got {type(value).__name__}")
    reject_unknown_keys(value, cls, where)
    return replace(cls(), **nested(dict(value)))


def nested_replicas(data: dict) -> dict:
    """A cluster dict with its replica dicts turned into ReplicaConfigs."""
    if isinstance(data.get("replica"), dict):
        data["replica"] = replica_config_from_dict(data["replica"], "cluster.replica")
    if data.get("replicas") is not None:
        data["replicas"] = tuple(
            spec if isinstance(spec, ReplicaConfig) else replica_config_from_dict(spec, f"cluster.replicas[{i}]")
            for i, spec in enumerate(data["replicas"])
        )
    return data


def apply_cluster_shortcuts(cluster: ClusterConfig, shortcuts: dict[str, Any]) -> ClusterConfig:
    replica_args = {k: v for k, v in shortcuts.items() if k in REPLICA_FIELDS}
    cluster_args = {k: v for k, v in shortcuts.items() if k in CLUSTER_FIELDS}
    if replica_args and cluster.replicas is not None:
        raise ConfigError(f"VidurRoutingEnv: replica shortcut(s) {', '.join(sorted(replica_args))} cannot apply to "
                          "a heterogeneous cluster (cluster.replicas); set them per replica")
    if replica_args:
        cluster = replace(cluster, replica=replace(cluster.replica, **replica_args))
    return replace(cluster, **cluster_args) if cluster_args else cluster


def apply_workload_shortcuts(workload: WorkloadConfig, shortcuts: dict[str, Any]) -> WorkloadConfig:
    args = {k: v for k, v in shortcuts.items() if k in WORKLOAD_FIELDS}
    if args.get("trace") is not None:
        args.setdefault("arrival", "trace")
        args.setdefault("lengths", "trace")
    return replace(workload, **args) if args else workload


# ---------------------------------------------------------------------------------------------
# Capacity and the arrival rate


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
    requests = generate_requests(probe, np.random.default_rng(REFERENCE_SEED))
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
                     time_models: list[ExecutionTimeModel] | None = None,
                     measured: dict[tuple, float] | None = None) -> float:
    """Sum of the replicas' saturated throughputs (requests/s), each replica config measured once.

    ``measured`` keeps the measurements across calls (keyed by replica config, time model and
    the workload's length scales): for callers that ask again with only the cluster's mix or the
    length scales changed, such as the env's per-episode draws."""
    models = time_models or build_time_models(cluster)
    measured = {} if measured is None else measured
    total = 0.0
    for spec, model in zip(cluster.replica_configs, models):
        key = (spec, id(model), workload.prefill_scale, workload.decode_scale)
        if key not in measured:
            measured[key] = replica_capacity(spec, model, workload)
        total += measured[key]
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


def run_simulation(scenario: Scenario, router: str | Router = DEFAULT_ROUTER, seed: int = 0,
                   requests: Requests | None = None,
                   time_models: list[ExecutionTimeModel] | None = None,
                   csv_path: str | Path | None = None, csv_layout: str = DEFAULT_CSV_LAYOUT) -> SimulationResult:
    """Generate the workload (or use ``requests``), route it, drain, and compute the metrics.

    ``time_models`` (one per replica) replace the scenario's time source, e.g. a benchmark
    timing iterations with another simulator's own predictions. ``csv_path`` streams the
    per-request CSV there in ``csv_layout`` while the run goes (:class:`CsvStream`; the
    same file :meth:`RequestMetrics.write_csv` writes afterwards).

    The simulator holds its request table in typed arrays (``compact``), 77 bytes a
    request, so traces of millions of requests fit in memory; the metrics are views of it.

    Besides Vidur's metrics, the result reports what the run changed or guessed:
    ``requests_cut_to_max_tokens`` (requests shortened to fit ``max_tokens``) and
    ``out_of_grid_lookups`` (profiled times extrapolated beyond the profiling grid).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"{setting('seed')}: must be an integer >= 0, got {seed!r}")
    resolved = scenario.resolve(time_models)
    workload, time_models = resolved.workload, resolved.time_models
    rng = np.random.default_rng(seed)
    if requests is None:
        requests = generate_requests(workload, rng)
    num_cut = getattr(requests, "num_cut", 0)
    sim = resolved.simulator(requests, compact=True)
    del requests  # the table holds what the run needs; a generated workload's arrays go
    policy = make_router(router) if isinstance(router, str) else router
    policy.reset(sim.num_replicas, rng)
    if csv_path is None:
        sim.run(policy)
    else:
        with CsvStream(csv_path, csv_layout, RequestMetrics.caches_prefixes(sim)) as stream:
            while not sim.done_routing:
                sim.route(policy, until=min(sim.next_request + CSV_STREAM_REQUESTS, sim.num_requests))
                stream.write_completed(sim.table, sim.next_request)
            sim.drain()
            stream.write_completed(sim.table, sim.next_request)
    per_request = RequestMetrics.from_simulator(sim)
    metrics = aggregate_metrics(sim, per_request)
    metrics["arrival_rate"] = workload.qps if workload.arrival in ("poisson", "gamma") else None
    metrics["requests_cut_to_max_tokens"] = num_cut
    distinct_models = {id(model): model for model in time_models}.values()
    metrics["out_of_grid_lookups"] = sum(model.out_of_grid_lookups for model in distinct_models)
    return SimulationResult(sim, per_request, metrics)
