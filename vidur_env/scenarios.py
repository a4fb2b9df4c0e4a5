"""Registered scenarios: what a router is trained and judged on, under one name everywhere.

A registered scenario is a :class:`~vidur_env.simulation.Scenario` (cluster, workload, load),
the observation settings a router works under there (staleness, cache view) and the
*training distribution* (:class:`TrafficRange`): the traffic an RL episode draws, wider than
the scenario's nominal traffic so that a policy does not learn one load level by heart.
Evaluation runs the nominal scenario on held-out seeds (:data:`EVALUATION_SEED` on).

The same name is ``scenario=`` in the env, ``--scenario`` in ``simulate`` and ``evaluate``,
and ``--scenarios`` in ``python -m sb3_klppo suite``. A new scenario is one
:func:`register_scenario` call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import numpy as np

from vidur_env.config import ClusterConfig, ConfigError, ReplicaConfig
from vidur_env.hardware import UnknownSpecError, get_device
from vidur_env.sessions import SessionConfig
from vidur_env.simulation import Scenario
from vidur_env.workload import Requests, WorkloadConfig

LENGTH_SCALE_STEPS = 16
"""Length scales are drawn on this many log-spaced steps of their range (plus one), so that
an env measures the capacity each needs once, not once per episode."""
EVALUATION_SEED = 1000
"""First seed of the held-out evaluation episodes (training draws its episodes from the
training seed's generator, which never restarts at these seeds)."""


@dataclass(frozen=True)
class TrafficRange:
    """Per-episode randomisation of training traffic: each ``reset`` draws a load level, an
    arrival burstiness and a length scale, then the workload with them; with ``devices`` also
    the cluster serving it.

    Each range is ``(low, high)``, or None to keep the scenario's own value. The load is drawn
    uniformly and turned into an arrival rate with the capacity measured for the drawn lengths,
    so 0.9 means 90% of what the cluster can serve of *that* traffic. ``cv`` switches arrivals
    to a Gamma process with that coefficient of variation (1: Poisson-like; 4: bursts), drawn
    uniformly. ``length_scale`` multiplies prompt and output lengths alike (log-uniform on
    :data:`LENGTH_SCALE_STEPS` + 1 points), for
    the conversation-fit and trace length distributions. ``keyed`` (for workloads whose requests
    carry prefix keys: sessions, hashed traces) is the fraction of requests that keep them,
    drawn uniformly; the others have no prefix identity, as in a trace without hashes, so a
    cache-aware policy also sees traffic its cache cannot help. ``devices`` (names of
    :data:`vidur_env.hardware.DEVICES`) puts each replica on one of them, drawn uniformly and
    independently per episode (its model and tensor-parallel degree kept), so that a policy
    meets replica mixes besides the one it is judged on; the load level then means that
    episode's cluster's capacity. A trace replay keeps its own times and lengths; train on it
    with ``trace_offset="random"`` instead.
    """

    load: tuple[float, float] | None = (0.6, 0.95)
    cv: tuple[float, float] | None = (1.0, 4.0)
    length_scale: tuple[float, float] | None = (0.7, 1.4)
    keyed: tuple[float, float] | None = None
    devices: tuple[str, ...] | None = None

    def validate(self, where: str = "traffic") -> None:
        """Raise :class:`ConfigError` naming the first range that is not ``(low, high)`` with
        ``0 < low <= high`` (for ``keyed``, a fraction: ``0 <= low <= high <= 1``; ``devices``
        must name known devices)."""
        self._validate_devices(where)
        for name in self.__dataclass_fields__:
            bounds = getattr(self, name)
            if bounds is None or name == "devices":
                continue
            ok = (isinstance(bounds, (tuple, list)) and len(bounds) == 2
                  and all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) for b in bounds)
                  and (0 <= bounds[0] <= bounds[1] <= 1 if name == "keyed" else 0 < bounds[0] <= bounds[1]))
            if not ok:
                rule = "0 <= low <= high <= 1" if name == "keyed" else "0 < low <= high"
                raise ConfigError(f"{where}.{name}: must be null or [low, high] with {rule}, got {bounds!r}")

    def _validate_devices(self, where: str) -> None:
        if self.devices is None:
            return
        if not isinstance(self.devices, (tuple, list)) or not self.devices \
                or not all(isinstance(d, str) for d in self.devices):
            raise ConfigError(f"{where}.devices: must be null or a non-empty list of device names, got {self.devices!r}")
        for device in self.devices:
            try:
                get_device(device)
            except UnknownSpecError as error:
                raise ConfigError(f"{where}.devices: {error}") from None

    def applies_to(self, workload: WorkloadConfig, where: str = "traffic") -> None:
        """Raise :class:`ConfigError` when a range cannot vary ``workload`` (a trace replay's
        times, a session generator's lengths or arrivals)."""
        if self.load is not None and workload.arrival not in ("poisson", "gamma"):
            raise ConfigError(f"{where}.load: the workload's arrivals are {workload.arrival!r}, not drawn at a rate; "
                              "set it to null")
        if self.cv is not None and (workload.arrival not in ("poisson", "gamma") or workload.sessions is not None):
            raise ConfigError(f"{where}.cv: only Poisson or Gamma request arrivals can be made bursty; set it to null")
        if self.length_scale is not None and (workload.lengths not in ("default", "trace")
                                              or workload.sessions is not None):
            raise ConfigError(f"{where}.length_scale: scales the default and trace length distributions only, not "
                              f"{'sessions' if workload.sessions is not None else workload.lengths!r}; set it to null")
        if self.keyed is not None and workload.sessions is None and workload.lengths != "trace":
            raise ConfigError(f"{where}.keyed: only session or trace requests carry prefix keys; set it to null")

    def draw(self, workload: WorkloadConfig, load: float | None, rng: np.random.Generator
             ) -> tuple[WorkloadConfig, float | None]:
        """The workload and load level of one episode: ``workload`` and ``load`` with every
        range drawn from ``rng`` (in the order load, cv, length scale)."""
        if self.load is not None:
            load = float(rng.uniform(*self.load))
        if self.cv is not None:
            workload = replace(workload, arrival="gamma", cv=float(rng.uniform(*self.cv)))
        if self.length_scale is not None:
            low, high = np.log(self.length_scale)
            step = int(rng.integers(LENGTH_SCALE_STEPS + 1))
            scale = float(np.exp(low + (high - low) * step / LENGTH_SCALE_STEPS))
            workload = replace(workload, prefill_scale=workload.prefill_scale * scale,
                               decode_scale=workload.decode_scale * scale)
        return workload, load

    def draw_devices(self, replicas: tuple[ReplicaConfig, ...], rng: np.random.Generator
                     ) -> tuple[ReplicaConfig, ...]:
        """``replicas`` with each one's device drawn from :attr:`devices` (unchanged without them)."""
        if self.devices is None:
            return replicas
        picks = rng.integers(len(self.devices), size=len(replicas))
        return tuple(replace(spec, device=self.devices[k]) for spec, k in zip(replicas, picks.tolist()))

    def strip_keys(self, requests: Requests, rng: np.random.Generator) -> Requests:
        """``requests`` with the prefix keys of all but a ``keyed`` fraction (drawn from ``rng``,
        then each request kept with that probability) removed."""
        if self.keyed is None or requests.block_hashes is None:
            return requests
        keep = rng.random(len(requests)) < rng.uniform(*self.keyed)
        hashes = [keys if kept else None for keys, kept in zip(requests.block_hashes, keep.tolist())]
        return replace(requests, block_hashes=hashes)

    @classmethod
    def from_value(cls, value: Any, where: str = "traffic") -> TrafficRange | None:
        """A range from itself, None, or a dict of its fields (lists for the bounds)."""
        if value is None or isinstance(value, cls):
            traffic = value
        elif isinstance(value, Mapping):
            unknown = sorted(set(value) - set(cls.__dataclass_fields__))
            if unknown:
                raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: "
                                  f"{', '.join(cls.__dataclass_fields__)}")
            traffic = cls(**{k: None if v is None else tuple(v) if isinstance(v, list) else v
                             for k, v in value.items()})
        else:
            raise ConfigError(f"{where}: expected a TrafficRange, a dict of its fields or None, got {value!r}")
        if traffic is not None:
            traffic.validate(where)
        return traffic

    def as_dict(self) -> dict[str, list[float] | None]:
        """The ranges as JSON-ready lists (the form configs and summaries carry)."""
        return {name: None if getattr(self, name) is None else list(getattr(self, name))
                for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class RegisteredScenario:
    """One entry of :data:`SCENARIOS`: how to make the scenario, what a router observes there,
    and the training distribution."""

    name: str
    description: str
    make: Callable[[], Scenario]
    observation: Mapping[str, Any] = field(default_factory=dict)
    """Env settings of what routers see (``obs_refresh_ms``, ``cache_view``); the simulator's
    own routers read the live state, so ``simulate`` refuses a scenario that sets staleness."""
    traffic: TrafficRange | None = field(default_factory=TrafficRange)
    """The training distribution (None: train on the nominal traffic)."""

    def observation_settings(self, obs_refresh_ms: float | None, cache_view: str | None) -> tuple[float, str | None]:
        """``(obs_refresh_ms, cache_view)`` as given, where None / ``"auto"`` take this
        scenario's (fresh observations and no cache view unless it sets them)."""
        return observation_settings(self.observation, obs_refresh_ms, cache_view)

    def env_kwargs(self, training: bool = False) -> dict[str, Any]:
        """Keyword arguments of the routing env for this scenario: nominal traffic, or with
        ``training`` the randomised traffic of :attr:`traffic`."""
        kwargs: dict[str, Any] = {"scenario": self.name}
        if training and self.traffic is not None:
            kwargs["traffic"] = self.traffic.as_dict()
        return kwargs


def observation_settings(observation: Mapping[str, Any], obs_refresh_ms: float | None,
                         cache_view: str | None) -> tuple[float, str | None]:
    """The env's ``(obs_refresh_ms, cache_view)``: the values given, where ``obs_refresh_ms=None``
    and ``cache_view="auto"`` take ``observation``'s (a registered scenario's settings; fresh
    and no cache view where it sets none). The env and ``evaluate`` both resolve them here."""
    if obs_refresh_ms is None:
        obs_refresh_ms = observation.get("obs_refresh_ms", 0.0)
    if cache_view == "auto":
        cache_view = observation.get("cache_view")
    return obs_refresh_ms, cache_view


SCENARIOS: dict[str, RegisteredScenario] = {}
"""The registry, in registration order (``--scenario`` choices, the suite's default order)."""
DEFAULT_SCENARIO = "default"
"""The scenario the CLIs start from when ``--scenario`` is left out (the dataclasses' defaults)."""


def register_scenario(entry: RegisteredScenario) -> RegisteredScenario:
    """Add ``entry`` to :data:`SCENARIOS` (a name is registered once)."""
    if entry.name in SCENARIOS:
        raise ValueError(f"scenario {entry.name!r} is already registered")
    SCENARIOS[entry.name] = entry
    return entry


def registered_scenario(name: str) -> RegisteredScenario:
    """The registry entry ``name``; the error lists the names."""
    if name not in SCENARIOS:
        raise ConfigError(f"scenario: unknown name {name!r}; choose from {', '.join(SCENARIOS)}")
    return SCENARIOS[name]


def named_scenario(name: str) -> Scenario:
    """A fresh :class:`Scenario` of the registered scenario ``name``."""
    return registered_scenario(name).make()


# ---------------------------------------------------------------------------------------------
# The scenarios


LLAMA2_7B = "llama-2-7b"
PREFIX_MODEL = "llama-3.1-8b"
"""The ``prefix`` scenario's model: Llama-3-8B shapes with a 128k context."""
PREFIX_MAX_TOKENS = 16384
"""The ``prefix`` scenario's longest request (sessions end before exceeding it)."""


def replicas_of(*specs: tuple[str, int]) -> ClusterConfig:
    """A heterogeneous Llama-2-7B cluster, one replica per (device, tensor-parallel degree)."""
    return ClusterConfig(replicas=tuple(ReplicaConfig(model=LLAMA2_7B, device=device, tensor_parallel=tp)
                                        for device, tp in specs))


def prefix_scenario() -> Scenario:
    """Shared prefixes: 4 x Llama-3.1-8B (A100, TP1, Sarathi) with prefix caching on, serving
    the session generator's defaults (:class:`vidur_env.sessions.SessionConfig`) at 85% of
    measured capacity, 1024 requests."""
    replica = ReplicaConfig(model=PREFIX_MODEL, prefix_caching=True)
    workload = WorkloadConfig(num_requests=1024, sessions=SessionConfig(), max_tokens=PREFIX_MAX_TOKENS)
    return Scenario(cluster=ClusterConfig(num_replicas=4, replica=replica), workload=workload)


register_scenario(RegisteredScenario(
    "default", "4 x Llama-2-7B on A100 (TP1, Sarathi), conversation lengths, Poisson arrivals at 85% load",
    Scenario))
register_scenario(RegisteredScenario(
    "hetero", "the default workload on 2 x A100 + 2 x H100 (Llama-2-7B, TP1): replicas of two speeds",
    lambda: Scenario(cluster=replicas_of(("a100", 1), ("a100", 1), ("h100", 1), ("h100", 1)))))
register_scenario(RegisteredScenario(
    "mixed_tp", "the default workload on A100 TP1 x 2, A100 TP2 and H100 TP2 (Llama-2-7B)",
    lambda: Scenario(cluster=replicas_of(("a100", 1), ("a100", 1), ("a100", 2), ("h100", 2)))))
register_scenario(RegisteredScenario(
    "stale100", "the default scenario with replica state observed every 100 ms", Scenario,
    observation={"obs_refresh_ms": 100.0}))
register_scenario(RegisteredScenario(
    "stale1000", "the default scenario with replica state observed every 1 s", Scenario,
    observation={"obs_refresh_ms": 1000.0}))
register_scenario(RegisteredScenario(
    "bursty", "the default cluster under bursty arrivals: Gamma inter-arrival gaps with CV 4",
    lambda: Scenario(workload=WorkloadConfig(arrival="gamma", cv=4.0)),
    traffic=TrafficRange(cv=(2.0, 6.0))))
register_scenario(RegisteredScenario(
    "prefix", "multi-turn sessions on Zipf-popular shared system prompts, 4 x Llama-3.1-8B with prefix "
              "caching; routers see the replicas' real caches (cache_view precise)",
    prefix_scenario, observation={"cache_view": "precise"},
    traffic=TrafficRange(cv=None, length_scale=None, keyed=(0.0, 1.0))))
