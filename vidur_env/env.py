"""The Gymnasium routing env: a thin adapter over :class:`vidur_env.cluster.ClusterSimulator`."""
from __future__ import annotations

import inspect
from math import inf
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from vidur_env.cache_view import CACHE_VIEWS, CacheView, prompt_keys
from vidur_env.cluster import ClusterSimulator
from vidur_env.config import ClusterConfig, ConfigError
from vidur_env.episode_draws import EpisodeDraws
from vidur_env.metrics import RequestMetrics, aggregate_metrics
from vidur_env.observation import ObservationBuilder, PrefillPlan, ReplicaCosts, features
from vidur_env.render import RENDER_MODES, render
from vidur_env.replica import Replica
from vidur_env.reward import DEFAULT_REWARD, Reward, RewardSettings, reward_class
from vidur_env.scenarios import TrafficRange, observation_settings, registered_scenario
from vidur_env.simulation import ResolvedScenario, Scenario, scenario_from_kwargs
from vidur_env.workload import Requests, WorkloadConfig, generate_requests

OUTPUT_PREDICTORS = ("none", "oracle", "noisy")
"""What the observation says of a request's output length: nothing (routers assume the
prior mean), the truth, or a noisy prediction (``predictor_error``)."""



class VidurRoutingEnv(gym.Env):
    """Route the requests of a simulated LLM-serving cluster to its replicas.

    ## Description

    A cluster of N replicas (Vidur-faithful batching schedulers, paged KV cache and execution
    times) serves a stream of requests. Each step routes the request that has just arrived;
    the simulator then runs every replica up to the next arrival. The objective is low latency.

    ## Action Space

    ``Discrete(N)``: the replica that serves the arriving request. An integer (Python ``int``,
    NumPy integer or 0-d integer array) in ``0 .. N-1``; anything else (``1.7``, ``True``, ``N``)
    raises ``ValueError`` naming the action and the valid range.

    ## Observation Space

    ``Box(0, 1, (N, F), float32)``: one row per replica; the incoming request's features are
    repeated in every row, so a permutation-equivariant policy can score replicas with shared
    weights. Unbounded quantities are squashed as ``x / (x + c)`` (0.5 at ``x = c``, never
    clipped, invertible; see :mod:`vidur_env.observation`).

    | Col | Feature          | Raw quantity                                                  | Transform     | Min | Max |
    |-----|------------------|---------------------------------------------------------------|---------------|-----|-----|
    | 0   | waiting          | requests queued at the replica, holding no KV (`num_waiting`) | squash(8)     | 0   | 1   |
    | 1   | waiting_tokens   | prompt tokens of those requests (`waiting_prompt_tokens`)     | squash(8192)  | 0   | 1   |
    | 2   | running          | requests holding KV, in the batch or not (`num_allocated_requests`) | squash(32) | 0 | 1 |
    | 3   | kv_utilization   | allocated KV blocks / KV blocks                               | none          | 0   | 1   |
    | 4   | batch_size       | requests in the iteration in flight (`num_in_batch`)          | squash(32)    | 0   | 1   |
    | 5   | queued_work      | estimated seconds of queued work: queued prompt tokens x prefill s/token + (waiting + running) x 210 x decode s/token, from the replica's time model (`queued_work_seconds`) | squash(2 s) | 0 | 1 |
    | 6   | batch_remaining  | seconds until the iteration in flight ends (0 when idle)      | squash(0.05 s)| 0   | 1   |
    | 7   | relative_speed   | fastest replica's cost of a reference request / this replica's (1 on homogeneous clusters) | none | 0 | 1 |
    | 8   | relative_kv      | this replica's KV blocks / the largest replica's              | none          | 0   | 1   |
    | 9   | prompt           | incoming request's prompt tokens / max_tokens                 | none          | 0   | 1   |
    | 10  | request_cost     | incoming request's estimated seconds on this replica: prompt x prefill s/token + 210 (with an output predictor: its true or predicted output) x decode s/token (`request_seconds`) | squash(0.2 s) | 0 | 1 |
    | 11  | dispatched_work  | request_cost of the requests routed to this replica since columns 0-8 were taken (0 with fresh observations) | squash(2 s) | 0 | 1 |
    | 12  | work_gap         | queued_work + dispatched_work + request_cost, minus its least value over the replicas (relative: does not saturate at high load) | squash(0.5 s) | 0 | 1 |
    | 13  | snapshot_age     | seconds since columns 0-8 were taken (0 with fresh observations) | squash(0.5 s) | 0 | 1 |
    | 14  | requests_left    | decisions left in the episode, this one included / `num_requests` (1 at the first, 1/`num_requests` at the last) | none | 0 | 1 |
    | 15  | fluid_ttft       | incoming request's wait for its first token here by a fluid model of the router's own decisions: the prefill time of every prompt routed here (its scheduler's iterations beside a typical decode batch, `PrefillPlan`), drained at 1 s per s, plus this prompt's; with `cache_view` set, only the tokens past each prompt's cached prefix there | squash(0.2 s) | 0 | 1 |
    | 16  | output           | incoming request's output tokens (true or predicted) / max_tokens, only with `output_predictor` "oracle" or "noisy" | none | 0 | 1 |
    | +0  | prefix_match     | with `cache_view` set: cached prompt blocks of the incoming request at this replica x 16 / its prompt tokens, in the chosen view | none | 0 | 1 |
    | +1  | cache_occupancy  | with `cache_view` set: blocks holding cached content / KV blocks, in the chosen view (capped at 1) | none | 0 | 1 |

    The two cache columns come last (after ``output`` when there is one), only with
    ``cache_view="approximate"`` (the env's own LRU index of the prompt blocks it routed to each
    replica, like SGLang's router tree) or ``"precise"`` (the replicas' real prefix caches,
    ``replica.kv.match_blocks`` / ``cached_blocks``, like Dynamo's KV events; 0 where a replica
    caches nothing); both are always current, whatever ``obs_refresh_ms``. Default None: no
    cache columns (the observation is as before). With them, ``RouterPolicy`` runs the
    cache-aware routers ``sglang_cache_aware``, ``llmd_scorer``, ``vllm_prefix`` and
    ``aibrix_prefix`` from observations (in the env's view).

    No feature reveals a request's output length unless ``output_predictor`` says so:
    ``"oracle"`` gives the true length, ``"noisy"`` a prediction off by a log-normal factor
    (``predictor_error`` is its sigma; mean-preserving, so 0.5 is typically 40% off), the
    kind of estimate a learned length predictor gives. With
    ``obs_refresh_ms=k`` columns 0-8 are the replica state at the last multiple of k ms (as a
    router polling its replicas sees it); columns 9-16 are always current (``fluid_ttft``
    reads no replica: it is the router's own record of the prompts it sent, which a router
    has whatever the age of its view). The observation after the last decision has zeros in
    columns 9-16.

    ## Rewards

    ``reward`` names a class in the registry :data:`vidur_env.reward.REWARDS` (a new reward is
    one class there, see :class:`vidur_env.reward.Reward`). Registered with the package:

    - ``"latency"`` (default; alias ``"e2e"``): minus the area under the number of requests in
      the system (arrived, not completed) between this decision and the next, divided by
      ``reward_scale``. The last step also charges the drain of the remaining requests, so
      the episode return is exactly ``-sum(E2E latency) / reward_scale``. Default scale: the
      mean latency of a request served alone with no queueing (on the fastest replica) over a
      fixed draw of the workload, so a step's reward is about minus the mean slowdown.
    - ``"ttft"``: the same with the number of requests still waiting for their first token;
      return ``-sum(TTFT) / reward_scale``, default scale the mean isolated TTFT.
    - ``"latency_ttft"``: the latency reward plus ``ttft_weight`` (default 10) times the ttft
      area, both over the latency scale: return ``-(sum(E2E) + w sum(TTFT)) / reward_scale``,
      for routers judged on time to first token as well as E2E.
    - ``"ttft_squared"``: each request still waiting for its first token is charged its wait
      so far, every second: return ``-sum(TTFT**2) / (2 reward_scale**2)``, default scale the
      mean isolated TTFT. Long waits cost more than the same total spread evenly, so a router
      cannot buy mean TTFT by parking some prompts behind others (the tail, p99 TTFT).
    - ``"slo"``: minus the number of requests completing in the step that miss the SLO
      (TTFT above ``slo_ttft_s`` or E2E above ``slo_e2e_s``; at least one is required), over
      ``reward_scale`` (default 1); the return is minus the number of misses.

    ## Starting State

    An empty cluster at the first arrival of a fresh workload draw from the env's generator
    (``reset(seed=...)`` makes it reproducible); a trace replay (``arrival`` and ``lengths``
    both ``"trace"``) is the same every episode, unless ``trace_offset="random"`` starts each
    episode at a new row of the trace (see Arguments). With ``traffic`` set, each episode
    first draws its load level, burstiness, length scale and, with ``devices``, the device of
    each replica (training randomisation).

    ## Episode End

    After ``num_requests`` decisions the episode *terminates*: the simulator drains, the final
    reward charges the remaining latency, and ``info`` carries ``"metrics"`` (Vidur-named
    aggregate metrics, :func:`vidur_env.metrics.aggregate_metrics`) and ``"request_metrics"``
    (:class:`vidur_env.metrics.RequestMetrics`). The drain is part of the episode and its
    reward already holds every remaining cost, so nothing follows it: ``terminated`` (not
    ``truncated``) tells SB3 not to bootstrap a value on top of it, and the ``requests_left``
    column lets a value function see the end coming.

    ## Action masks

    :meth:`action_masks` (sb3-contrib's MaskablePPO) marks replicas that can take the request:
    the prompt fits the replica's KV cache when empty, and the replica's queue is shorter
    than ``max_queue`` (when set). If no replica qualifies, all are allowed. Masks read the
    live simulator and are advisory: a masked action is still carried out.

    ## Arguments

    ``gymnasium.make("vidur_env:VidurRouting-v0", **kwargs)``; with no kwargs, the default
    scenario: 4 x Llama-2-7B on A100 (TP1, Sarathi), conversation-trace lengths, Poisson
    arrivals at 85% of measured capacity, 512 requests per episode.

    - ``cluster``: :class:`ClusterConfig` or dict (``replica`` / ``replicas`` as dicts for a
      heterogeneous cluster). ``workload``: :class:`WorkloadConfig` or dict.
      ``scenario``: a :class:`Scenario`, or a registered name
      (:data:`vidur_env.scenarios.SCENARIOS`, the names ``--scenario`` takes in ``simulate`` and
      ``evaluate``: ``default``, ``hetero``, ``mixed_tp``, ``stale100``, ``stale1000``, ``bursty``,
      ``prefix``), instead of the three; shortcuts apply over it. A registered name also
      brings its observation settings (``obs_refresh_ms``, ``cache_view``) unless given.
    - ``load``: arrival rate as a fraction of measured capacity (Poisson/Gamma); ``"auto"``
      means 0.85 unless ``qps`` is given as a shortcut; None keeps the workload's ``qps``.
    - Flat shortcuts: any field of ClusterConfig (``num_replicas``, ``time_model``,
      ``profiling_dir``, ``keying``, ``extrapolate``), ReplicaConfig (``model``, ``device``,
      ``tensor_parallel`` or ``tp``, ``scheduler``, ``chunk_size``, ...) or WorkloadConfig
      (``arrival``, ``qps``, ``lengths``, ``trace``, ``max_tokens``, ...) overrides it in
      ``cluster`` / ``workload``. ``trace`` alone implies a trace replay; ``trace="sample"`` is
      the small trace shipped with the package.
    - ``num_requests``: decisions per episode. Default None: every row of the workload's trace
      when it reads one (from ``trace_offset`` on), else the workload's ``num_requests`` (512 by
      default). More than the trace has raises naming both numbers.
    - ``trace_offset`` (a WorkloadConfig shortcut): the trace row an episode starts at, times
      shifted so that it arrives at the trace's first time stamp. ``"random"`` draws the row
      for every episode from the env's generator (uniform over the rows that leave
      ``num_requests`` requests), so that training on a long trace with, say,
      ``num_requests=512, trace_offset="random"`` sees all of it, reproducibly by seed.
    - ``reward``, ``reward_scale``, ``slo_ttft_s``, ``slo_e2e_s``, ``ttft_weight``: see Rewards.
    - ``traffic``: training randomisation, a :class:`vidur_env.scenarios.TrafficRange` or a
      dict of its ranges (``load``, ``cv``, ``length_scale``, ``keyed``, ``devices``): every
      episode draws its load level (arrival rate from the capacity measured for the drawn
      lengths), Gamma burstiness, a length scale (log-uniform on a grid,
      :data:`vidur_env.scenarios.LENGTH_SCALE_STEPS`), the fraction of requests that keep their
      prefix keys and each replica's device (the cluster of the episode: :attr:`cluster`,
      :attr:`time_models` and :attr:`costs` follow it; the reward scale stays the nominal
      cluster's). Default None: the nominal traffic and cluster every episode.
    - ``obs_refresh_ms``: observation staleness (0: fresh; default None: the registered
      scenario's, else 0).
    - ``output_predictor``: ``"none"`` (default), ``"oracle"`` or ``"noisy"`` (see the
      Observation Space); ``predictor_error``: the noisy predictor's log-normal sigma (0.5).
    - ``cache_view``: None, ``"approximate"`` or ``"precise"``: adds the cache columns above;
      default ``"auto"``: the registered scenario's view, else None.
    - ``max_queue``: queue length at which :meth:`action_masks` masks a replica.
    - ``render_mode``: None, ``"ansi"`` (a text table of the replicas) or ``"rgb_array"`` (bars
      of queued requests, running requests and KV use per replica; SB3's ``make_vec_env``
      asks for it by default).

    Unknown arguments raise :class:`vidur_env.config.ConfigError` naming them.

    ## Version History

    - v0: initial version.
    """

    metadata = {"render_modes": list(RENDER_MODES), "render_fps": 4}

    def __init__(
        self,
        *,
        cluster: ClusterConfig | dict | None = None,
        workload: WorkloadConfig | dict | None = None,
        load: float | str | None = "auto",
        scenario: Scenario | str | None = None,
        traffic: TrafficRange | dict | None = None,
        num_requests: int | None = None,
        reward: str = DEFAULT_REWARD,
        reward_scale: float | None = None,
        slo_ttft_s: float | None = None,
        slo_e2e_s: float | None = None,
        ttft_weight: float = RewardSettings.ttft_weight,
        obs_refresh_ms: float | None = None,
        output_predictor: str = "none",
        predictor_error: float = 0.5,
        max_queue: int | None = None,
        render_mode: str | None = None,
        cache_view: str | None = "auto",
        **shortcuts: Any,
    ) -> None:
        entry = registered_scenario(scenario) if isinstance(scenario, str) else None
        obs_refresh_ms, cache_view = observation_settings(entry.observation if entry else {}, obs_refresh_ms,
                                                          cache_view)
        if cache_view is not None and cache_view not in CACHE_VIEWS:
            raise ConfigError(f"VidurRoutingEnv.cache_view: must be None, {' or '.join(map(repr, CACHE_VIEWS))} "
                              f"(or 'auto': the scenario's), got {cache_view!r}")
        check_predictor(output_predictor, predictor_error)
        self.cache_view = cache_view
        self.output_predictor = output_predictor
        self.predictor_error = float(predictor_error)
        own_arguments = [name for name in inspect.signature(VidurRoutingEnv).parameters if name != "shortcuts"]
        self.scenario = scenario_from_kwargs(cluster, workload, load, entry.make() if entry else scenario,
                                             shortcuts, own_arguments)
        self.scenario.validate()
        self.reward_class: type[Reward] = reward_class(reward)
        self.reward_kind = self.reward_class.name
        self.reward_settings = RewardSettings(slo_ttft_s, slo_e2e_s, ttft_weight)
        self.reward_class.check(self.reward_settings)
        check_options(num_requests, reward_scale, obs_refresh_ms, max_queue, render_mode)
        self.render_mode = render_mode
        self.max_queue = max_queue
        resolved = self.scenario.resolve()
        if num_requests is not None or "trace" in (resolved.workload.arrival, resolved.workload.lengths):
            resolved = resolved.with_requests(num_requests)
        self.resolved = resolved
        """The scenario made runnable: time models, and the workload with its arrival rate fixed."""
        self.workload = resolved.workload
        self.traffic = TrafficRange.from_value(traffic, "VidurRoutingEnv.traffic")
        if self.traffic is not None:
            self.traffic.applies_to(self.workload, "VidurRoutingEnv.traffic")
        self._draws = EpisodeDraws(resolved, self.traffic)
        self._costs: dict[int, ReplicaCosts] = {}
        """Per time model (by id): the costs the observation reads, computed once each."""
        self._plans: dict[tuple[int, int | None, int], PrefillPlan] = {}
        """The prefill plans of ``fluid_ttft`` by key, kept across episodes with their prefill times."""
        self._use_cluster(resolved)
        replay = self.workload.arrival == "trace" and self.workload.lengths == "trace"
        self.fixed_trace = replay and self.workload.trace_offset != "random"
        self.num_requests = len(resolved.reference_requests())
        self.reward_scale = reward_scale if reward_scale is not None else resolved.reward_scale(self.reward_class)
        self.num_replicas = len(self.cluster.replica_configs)
        self.refresh_s = obs_refresh_ms / 1000.0
        num_features = len(features(output_predictor != "none", cache_view is not None))
        self.observation_space = spaces.Box(0.0, 1.0, (self.num_replicas, num_features), np.float32)
        self.action_space = spaces.Discrete(self.num_replicas)
        self.simulator: ClusterSimulator | None = None
        """The episode's simulator (public state for routers that need more than the observation)."""
        self.requests: Requests | None = None
        """The episode's workload draw."""
        self.current_request = -1
        """Id of the request awaiting a decision (-1 once the episode is over)."""

    def _use_cluster(self, episode: ResolvedScenario) -> None:
        """Make ``episode``'s cluster the current one: :attr:`cluster`, :attr:`time_models` and
        :attr:`costs` describe the episode being run (the nominal cluster unless the training
        distribution draws devices)."""
        self.episode = episode
        self.cluster = episode.cluster
        self.time_models = episode.time_models
        for model in self.time_models:
            if id(model) not in self._costs:
                self._costs[id(model)] = ReplicaCosts.from_time_model(model)
        self.costs = [self._costs[id(model)] for model in self.time_models]

    def _prefill_plan(self, replica: Replica) -> PrefillPlan:
        """``replica``'s prefill plan, the one kept from an earlier episode if it had the same."""
        plan = PrefillPlan.of(replica)
        return self._plans.setdefault(plan.key, plan)

    def isolated_latencies(self, requests: Requests) -> tuple[np.ndarray, np.ndarray]:
        """(TTFT, E2E) of each request served alone on its fastest replica of the current
        episode's cluster, with every prompt block an earlier request computed cached where the
        replicas cache prefixes: the no-queueing bound."""
        return self.episode.isolated_latencies(requests)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._use_cluster(self._draws.draw(self.np_random))
        self.requests = self.resolved.reference_requests() if self.fixed_trace else generate_requests(
            self.episode.workload, self.np_random)
        if self.traffic is not None:
            self.requests = self.traffic.strip_keys(self.requests, self.np_random)
        sim = self.episode.simulator(self.requests)
        self.simulator = sim
        self._prefill = sim.table.orig_prefill
        self._output = self._output_estimates(sim.table.orig_decode)
        self._admit_tokens = [r.kv.max_admissible_prompt() for r in sim.replicas]
        self._reward = self.reward_class(sim.table, sim.replicas, self.reward_scale, self.reward_settings)
        self._obs = ObservationBuilder(self.costs, [r.num_blocks for r in sim.replicas], self.workload.max_tokens,
                                       prefill_plans=[self._prefill_plan(r) for r in sim.replicas],
                                       output_estimate=self.output_predictor != "none", refresh_s=self.refresh_s,
                                       cache=None if self.cache_view is None else CacheView(self.cache_view, sim.replicas))
        self._decisions = 0
        obs = self._next_observation(sim.table.arrived_at[0])
        return obs, {"request_id": self.current_request}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        sim = self.simulator
        if sim is None or self.current_request < 0:
            raise RuntimeError("call reset() before step(), and again after the episode ends")
        replica = self._replica_of(action)
        if self.cache_view is not None:
            self._obs.record(replica, prompt_keys(sim, self.current_request))
        sim.dispatch(replica)
        self._obs.dispatched(replica)
        self._reward.add(self.current_request, replica)
        self._decisions += 1
        if self._decisions < self.num_requests:
            t = sim.table.arrived_at[self._decisions]
            obs = self._next_observation(t)
            return obs, self._reward.step(t), False, False, {"request_id": self.current_request}
        return self._end_episode()

    def _output_estimates(self, outputs: np.ndarray) -> np.ndarray:
        """What the observation says of each request's output length (see ``output_predictor``):
        the truth, or the truth times a mean-one log-normal factor drawn from the env's generator."""
        if self.output_predictor != "noisy":
            return outputs
        sigma = self.predictor_error
        factor = np.exp(sigma * self.np_random.standard_normal(len(outputs)) - sigma**2 / 2)
        return np.clip(np.rint(outputs * factor), 1, self.workload.max_tokens).astype(np.int64)

    def _replica_of(self, action: Any) -> int:
        """The replica id ``action`` names; a value outside ``Discrete(N)`` raises ValueError."""
        if type(action) is not int and not isinstance(action, np.integer):
            array = np.asarray(action)
            if array.ndim != 0 or array.dtype.kind not in "iu":
                raise ValueError(f"VidurRoutingEnv.step: action {action!r} is not in the action space: expected "
                                 f"an integer replica id in 0..{self.num_replicas - 1}")
            action = array.item()
        if not 0 <= action < self.num_replicas:
            raise ValueError(f"VidurRoutingEnv.step: action {action!r} is not in the action space: expected an "
                             f"integer replica id in 0..{self.num_replicas - 1}")
        return int(action)

    def _next_observation(self, t: float) -> np.ndarray:
        """Advance to the arrival at ``t`` (via the refresh tick when stale) and observe."""
        sim = self.simulator
        builder = self._obs
        if self.refresh_s > 0.0:
            if builder.needs_refresh(t):
                tick = builder.last_tick(t)
                sim.advance_to(tick)
                builder.snapshot(sim.replicas, tick)
            rid = sim.advance_to_next_arrival()
        else:
            rid = sim.advance_to_next_arrival()
            builder.snapshot(sim.replicas, t)
        self.current_request = rid
        keys = prompt_keys(sim, rid) if self.cache_view is not None else ()
        return builder.build(self._prefill[rid], self._output[rid], t, 1.0 - self._decisions / self.num_requests, keys)

    def _end_episode(self) -> tuple[np.ndarray, float, bool, bool, dict]:
        sim = self.simulator
        sim.drain()
        reward = self._reward.finish()
        self.current_request = -1
        self._obs.snapshot(sim.replicas, sim.now)
        obs = self._obs.build(0, 0, sim.now, 0.0)
        per_request = RequestMetrics.from_simulator(sim)
        info = {"metrics": aggregate_metrics(sim, per_request), "request_metrics": per_request}
        return obs, reward, True, False, info

    def action_masks(self) -> np.ndarray:
        """Replicas that can take the current request (see the class docstring)."""
        sim = self.simulator
        rid = self.current_request
        if sim is None or rid < 0:
            return np.ones(self.num_replicas, dtype=bool)
        prompt = self._prefill[rid]
        cap = inf if self.max_queue is None else self.max_queue
        mask = np.array([prompt <= admit and r.num_waiting < cap for r, admit in zip(sim.replicas, self._admit_tokens)],
                        dtype=bool)
        return mask if mask.any() else np.ones(self.num_replicas, dtype=bool)

    def render(self) -> str | np.ndarray | None:
        return render(self.render_mode, self.simulator, self.costs, self.current_request)


# ---------------------------------------------------------------------------------------------
# Helpers: argument checks


def check_predictor(output_predictor: Any, predictor_error: Any) -> None:
    if output_predictor not in OUTPUT_PREDICTORS:
        raise ConfigError(f"VidurRoutingEnv.output_predictor: must be one of {', '.join(OUTPUT_PREDICTORS)}, "
                          f"got {output_predictor!r}")
    if isinstance(predictor_error, bool) or not isinstance(predictor_error, (int, float)) \
            or not 0 <= predictor_error < float("inf"):
        raise ConfigError(f"VidurRoutingEnv.predictor_error: must be a finite number >= 0, got {predictor_error!r}")


def check_options(num_requests: Any, reward_scale: Any, obs_refresh_ms: Any, max_queue: Any, render_mode: Any) -> None:
    if num_requests is not None and (isinstance(num_requests, bool) or not isinstance(num_requests, int)
                                     or num_requests < 1):
        raise ConfigError(f"VidurRoutingEnv.num_requests: must be a positive integer or None, got {num_requests!r}")
    if reward_scale is not None and not (isinstance(reward_scale, (int, float)) and reward_scale > 0):
        raise ConfigError(f"VidurRoutingEnv.reward_scale: must be a positive number or None, got {reward_scale!r}")
    if not (isinstance(obs_refresh_ms, (int, float)) and obs_refresh_ms >= 0):
        raise ConfigError(f"VidurRoutingEnv.obs_refresh_ms: must be a non-negative number, got {obs_refresh_ms!r}")
    if max_queue is not None and (isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1):
        raise ConfigError(f"VidurRoutingEnv.max_queue: must be a positive integer or None, got {max_queue!r}")
    if render_mode is not None and render_mode not in RENDER_MODES:
        raise ConfigError(f"VidurRoutingEnv.render_mode: must be None, {' or '.join(map(repr, RENDER_MODES))}, "
                          f"got {render_mode!r}")
