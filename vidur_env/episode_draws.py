"""What one training episode runs on: the scenario with its :class:`TrafficRange` drawn.

A reset of the routing env draws the episode's traffic (load level, burstiness, length scale)
and, with ``devices``, the device of every replica. Each draw needs measurements that do not
change between episodes (a replica's capacity for a length scale, a device's time model), so
this keeps them, and an episode costs a lookup rather than a capacity probe.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from vidur_env.cluster import build_time_models, time_model_key
from vidur_env.config import ConfigError, ReplicaConfig
from vidur_env.scenarios import TrafficRange
from vidur_env.simulation import ResolvedScenario, cluster_capacity
from vidur_env.time_model import ExecutionTimeModel


class EpisodeDraws:
    """Draws episodes of ``resolved`` under ``traffic`` (None: the nominal scenario every time)."""

    def __init__(self, resolved: ResolvedScenario, traffic: TrafficRange | None,
                 where: str = "VidurRoutingEnv.traffic") -> None:
        self.resolved = resolved
        self.traffic = traffic
        self._models: dict[tuple[str, str, int], ExecutionTimeModel] = {
            time_model_key(spec): model for spec, model in zip(resolved.cluster.replica_configs, resolved.time_models)}
        self._capacity: dict[tuple, float] = {}
        """Replica capacities measured so far (:func:`~vidur_env.simulation.cluster_capacity`'s ``measured``)."""
        if traffic is not None and traffic.devices is not None:
            self._prepare_devices(traffic.devices, where)

    def _prepare_devices(self, devices: tuple[str, ...], where: str) -> None:
        """Check that every replica config fits on every drawn device, and build the time
        models the draws need, so that a bad device fails here, naming it, not mid-training."""
        scenario = self.resolved.scenario
        variants = list(dict.fromkeys(replace(spec, device=device) for spec in scenario.cluster.replica_configs
                                      for device in devices))
        for spec in variants:
            try:
                replace(scenario, cluster=replace(scenario.cluster, replicas=(spec,))).validate()
            except ConfigError as error:
                raise ConfigError(f"{where}.devices: {spec.model} (TP{spec.tensor_parallel}) cannot run on "
                                  f"{spec.device!r}: {error}") from None
        missing = tuple(spec for spec in variants if time_model_key(spec) not in self._models)
        if missing:
            try:
                models = build_time_models(replace(scenario.cluster, replicas=missing))
            except (ConfigError, OSError) as error:
                raise ConfigError(f"{where}.devices: no time model for a drawn device: {error}") from None
            self._models.update((time_model_key(spec), model) for spec, model in zip(missing, models))

    def draw(self, rng: np.random.Generator) -> ResolvedScenario:
        """The next episode's cluster, time models and workload, drawn from ``rng`` (load,
        burstiness and length scale, then the devices); the arrival rate is the drawn load
        times the drawn cluster's capacity for the drawn lengths."""
        if self.traffic is None:
            return self.resolved
        workload, load = self.traffic.draw(self.resolved.workload, self.resolved.scenario.load, rng)
        episode = self._on(self.traffic.draw_devices(self.resolved.cluster.replica_configs, rng))
        rate_changes = (self.traffic.load, self.traffic.length_scale, self.traffic.devices) != (None, None, None)
        if load is not None and rate_changes:
            capacity = cluster_capacity(episode.cluster, workload, episode.time_models, self._capacity)
            workload = replace(workload, qps=load * capacity)
        return replace(episode, workload=workload)

    def _on(self, specs: tuple[ReplicaConfig, ...]) -> ResolvedScenario:
        """The nominal scenario on the replicas ``specs`` (itself when they are its own)."""
        if specs == self.resolved.cluster.replica_configs:
            return self.resolved
        scenario = self.resolved.scenario
        cluster = replace(scenario.cluster, replicas=specs)
        return replace(self.resolved, scenario=replace(scenario, cluster=cluster),
                       time_models=[self._models[time_model_key(spec)] for spec in specs])
