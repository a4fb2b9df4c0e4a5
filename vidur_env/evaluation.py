"""Compare routers (and trained SB3 models) on the same workloads, against a no-queueing bound.

Every policy runs full episodes of the routing env; episode ``k`` is reset with seed
``seed + k`` for every policy (common random numbers), so all policies route the same
requests. Per-request E2E and TTFT are pooled over episodes. The ``lower_bound`` row serves
every request alone on its fastest replica (:func:`vidur_env.reward.isolated_latencies`):
no router can beat it, and the gap to it is the queueing and batching a router caused. With
prefix caching on, each prompt starts there past every leading block an earlier request
computed (:func:`vidur_env.kv_cache.reachable_hit_tokens`: the most any replica's cache could
hold, whatever the routing), so it stays a bound. Per request it bounds TTFT but not always
E2E: Vidur times a decode batch by its mean KV, so a long request decodes faster beside short
ones than alone; the pooled E2E figures stay above it.

Besides the pooled rows, every policy's per-episode figures are kept, so two policies are
compared episode by episode (:meth:`EvaluationResult.compare`, a paired t interval).
"""
from __future__ import annotations

import importlib
import inspect
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from vidur_env.config import ConfigError
from vidur_env.env import VidurRoutingEnv
from vidur_env.metrics import summarize, write_json
from vidur_env.paired import PairedDifference, paired_difference
from vidur_env.router_base import Router
from vidur_env.routers import ROUTERS, RouterPolicy

LOWER_BOUND = "lower_bound"
TABLE_COLUMNS = (
    ("e2e_mean", "E2E mean"), ("e2e_p50", "E2E p50"), ("e2e_p99", "E2E p99"),
    ("ttft_mean", "TTFT mean"), ("ttft_p50", "TTFT p50"), ("ttft_p99", "TTFT p99"),
    ("throughput", "req/s"), ("restarts", "restarts"), ("return_mean", "return"),
)
EPISODE_FIGURES = ("e2e_mean", "e2e_p50", "e2e_p99", "ttft_mean", "ttft_p50", "ttft_p99", "throughput", "restarts",
                   "return")
"""Figures kept for every episode of every policy (``EvaluationResult.episodes``)."""
Progress = Callable[[int], None]
"""Told the routing decisions of each finished episode (a progress bar's ``update``)."""


class EvaluationError(ConfigError):
    """Unusable evaluation input (router name, model file, model/env mismatch); a ConfigError,
    so the CLI reports it as a user error (exit status 2)."""


@dataclass
class EvaluationResult:
    """Pooled metrics per policy, per-episode figures, the per-request latencies, and the settings.

    ``rows[name]`` holds ``e2e_mean/p50/p90/p99``, ``ttft_mean/p50/p90/p99`` (seconds),
    ``throughput`` (completed requests per second of makespan, pooled), ``restarts`` (total
    recompute preemptions), ``return_mean`` (mean episode return; None for the bound),
    ``episodes`` and ``num_requests``. ``episodes[name][figure]`` lists one value per episode
    for each of :data:`EPISODE_FIGURES` (``return`` is None for the bound).
    """

    rows: dict[str, dict]
    latencies: dict[str, dict[str, np.ndarray]] = field(repr=False)
    settings: dict[str, Any] = field(default_factory=dict)
    episodes: dict[str, dict[str, list]] = field(default_factory=dict, repr=False)

    def compare(self, ours: str, theirs: str, figure: str) -> PairedDifference:
        """Episode-paired relative difference of ``figure`` (lower is better), ``ours`` vs ``theirs``."""
        return paired_difference(self.episodes[ours][figure], self.episodes[theirs][figure])

    def table(self) -> str:
        """A fixed-width text table, one line per policy (latencies in seconds)."""
        width = max(len("policy"), *(len(name) for name in self.rows))
        header = f"{'policy':<{width}}" + "".join(f"{title:>11}" for _, title in TABLE_COLUMNS)
        lines = [header, "-" * len(header)]
        for name, row in self.rows.items():
            cells = "".join(f"{format_cell(row.get(key)):>11}" for key, _ in TABLE_COLUMNS)
            lines.append(f"{name:<{width}}{cells}")
        return "\n".join(lines) + "\n"

    def to_json(self, path: str | Path) -> None:
        """The settings, rows and per-episode figures as JSON (NaN written as null)."""
        rows = {name: {k: none_if_nan(v) for k, v in row.items()} for name, row in self.rows.items()}
        episodes = {name: {k: [none_if_nan(v) for v in values] for k, values in figures.items()}
                    for name, figures in self.episodes.items()}
        write_json({"settings": self.settings, "rows": rows, "episodes": episodes}, path)

    def plot_latency_cdf(self, path: str | Path) -> None:
        """A PNG with the empirical CDFs of E2E (left) and TTFT (right), one line per policy."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(11, 4.5))
        FigureCanvasAgg(figure)
        axes = figure.subplots(1, 2)
        for ax, kind, title in zip(axes, ("e2e", "ttft"), ("E2E latency", "Time to first token")):
            for name, values in self.latencies.items():
                data = np.sort(values[kind])
                if data.size == 0:
                    continue
                style = "--" if name == LOWER_BOUND else "-"
                ax.plot(data, np.arange(1, data.size + 1) / data.size, style, label=name)
            ax.set_xscale("log")
            ax.set_xlabel("seconds (log scale)")
            ax.set_ylabel("fraction of requests")
            ax.set_title(title)
            ax.grid(True, alpha=0.3)
        axes[0].legend(fontsize="small")
        figure.tight_layout()
        figure.savefig(path, dpi=120)


def format_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def none_if_nan(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def check_router_names(routers: Sequence[str]) -> list[str]:
    """The names, validated against the registry (the error lists the valid ones)."""
    names = [name.strip() for name in routers if name.strip()]
    unknown = [name for name in names if name not in ROUTERS]
    if unknown:
        raise EvaluationError(f"unknown router(s) {', '.join(unknown)}; choose from {', '.join(sorted(ROUTERS))}")
    if len(set(names)) != len(names):
        raise EvaluationError(f"router names repeat: {', '.join(names)}")
    return names


def pooled_row(run: dict[str, Any]) -> dict[str, Any]:
    """The row of one policy from its episodes' per-request arrays."""
    e2e_all, ttft_all = np.concatenate(run["e2e"]), np.concatenate(run["ttft"])
    e2e_stats, ttft_stats = summarize(e2e_all), summarize(ttft_all)
    span = float(sum(run["makespans"]))
    returns = run["returns"]
    row: dict[str, Any] = {f"e2e_{k}": e2e_stats[k] for k in ("mean", "p50", "p90", "p99")}
    row.update({f"ttft_{k}": ttft_stats[k] for k in ("mean", "p50", "p90", "p99")})
    row["throughput"] = e2e_all.size / span if span > 0 else float("nan")
    row["restarts"] = int(sum(run["restarts"]))
    row["return_mean"] = float(np.mean(returns)) if returns else None
    row["episodes"] = len(run["e2e"])
    row["num_requests"] = int(e2e_all.size)
    return row


def episode_figures(run: dict[str, Any]) -> dict[str, list]:
    """:data:`EPISODE_FIGURES`, one value per episode, from the same arrays as :func:`pooled_row`."""
    figures: dict[str, list] = {name: [] for name in EPISODE_FIGURES}
    for k, (e2e, ttft, span) in enumerate(zip(run["e2e"], run["ttft"], run["makespans"])):
        e2e_stats, ttft_stats = summarize(e2e), summarize(ttft)
        for kind, stats in (("e2e", e2e_stats), ("ttft", ttft_stats)):
            for q in ("mean", "p50", "p99"):
                figures[f"{kind}_{q}"].append(stats[q])
        figures["throughput"].append(e2e.size / span if span > 0 else float("nan"))
        figures["restarts"].append(int(run["restarts"][k]))
        figures["return"].append(run["returns"][k] if run["returns"] else None)
    return figures


def model_predictor(model: Any, env: VidurRoutingEnv, deterministic: bool):
    """A function obs -> action for an SB3 model, checking that it fits the env's spaces.

    Models trained on flattened observations (gymnasium's FlattenObservation) are fed the
    flattened observation; MaskablePPO models get the env's action masks.
    """
    shape = env.observation_space.shape
    model_shape = getattr(getattr(model, "observation_space", None), "shape", shape)
    flat = tuple(model_shape) == (int(np.prod(shape)),)
    if tuple(model_shape) != shape and not flat:
        raise EvaluationError(f"the model expects observations of shape {tuple(model_shape)} but the env gives {shape}; "
                              "evaluate on the scenario the model was trained on (replicas, oracle)")
    masked = "action_masks" in inspect.signature(model.predict).parameters

    def act(obs: np.ndarray) -> int:
        kwargs = {"action_masks": env.action_masks()} if masked else {}
        action, _ = model.predict(obs.reshape(-1) if flat else obs, deterministic=deterministic, **kwargs)
        return int(np.asarray(action).reshape(-1)[0])

    return act


def router_predictor(policy: RouterPolicy):
    """obs -> action for a router policy (its state restarts when the policy is reset)."""

    def act(obs: np.ndarray) -> int:
        action, _ = policy.predict(obs[None])
        return int(action[0])

    return act


def live_predictor(router: Router, env: VidurRoutingEnv):
    """obs -> action for a :attr:`~vidur_env.router_base.Router.live` router: it decides on the
    env's simulator; ``reset(seed)`` restarts it with a generator of that seed."""

    def act(_obs: np.ndarray) -> int:
        return router.choose(env.simulator, env.current_request)

    def reset(seed: int) -> None:
        router.reset(env.num_replicas, np.random.default_rng(seed))

    return act, reset


def router_actor(name: str, env: VidurRoutingEnv):
    """(obs -> action, reset(seed)) of the registered router ``name`` on ``env``: a live router
    decides on the env's simulator (refused with stale observations, where it would see more
    than the others), any other from the observations."""
    if ROUTERS[name].live:
        if env.refresh_s > 0.0:
            raise EvaluationError(f"router {name!r} decides on the live simulator; with stale observations "
                                  f"(obs_refresh_ms {env.refresh_s * 1000:g}) it would see more than the others")
        return live_predictor(ROUTERS[name](), env)
    policy = RouterPolicy(name)
    return router_predictor(policy), policy.reset


def run_episodes(env: VidurRoutingEnv, act, episodes: int, seed: int, on_reset=None,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Full episodes with ``act``; per-request arrays and per-episode totals from the end-of-episode info."""
    e2e, ttft, makespans, restarts, returns = [], [], [], [], []
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        if on_reset is not None:
            on_reset(seed + k)
        total, done, info, decisions = 0.0, False, {}, 0
        while not done:
            obs, reward, terminated, truncated, info = env.step(act(obs))
            done = terminated or truncated
            total += reward
            decisions += 1
        per_request = info["request_metrics"]
        e2e.append(per_request.request_e2e_time)
        ttft.append(per_request.prefill_e2e_time)
        makespans.append(info["metrics"]["makespan"])
        restarts.append(int(per_request.request_num_restarts.sum()))
        returns.append(total)
        if progress is not None:
            progress(decisions)
    return {"e2e": e2e, "ttft": ttft, "makespans": makespans, "restarts": restarts, "returns": returns}


def lower_bound_episodes(env: VidurRoutingEnv, episodes: int, seed: int) -> dict[str, Any]:
    """Isolated latencies of the same workload draws the policies saw."""
    e2e, ttft, makespans = [], [], []
    for k in range(episodes):
        env.reset(seed=seed + k)
        requests = env.requests
        first, last = env.isolated_latencies(requests)
        ttft.append(first)
        e2e.append(last)
        makespans.append(float(np.max(requests.arrived_at + last) - np.min(requests.arrived_at)))
    return {"e2e": e2e, "ttft": ttft, "makespans": makespans, "restarts": [0] * episodes, "returns": None}


def describe_scenario(env: VidurRoutingEnv) -> str:
    """One line naming what was simulated: cluster, scheduler, arrivals, load and episode length."""
    cluster, workload = env.scenario.cluster, env.workload
    models = sorted({f"{r.model} on {r.device} (TP{r.tensor_parallel}, {r.scheduler})" for r in cluster.replica_configs})
    load = f"load {env.scenario.load:g}" if env.scenario.load is not None else f"{workload.qps:g} req/s"
    return (f"{env.num_replicas} replicas: {', '.join(models)}; {workload.arrival} arrivals at {load}, "
            f"{'session' if workload.sessions is not None else workload.lengths} lengths, {env.num_requests} "
            f"requests per episode, reward {env.reward_kind}")


def evaluate(env_kwargs: dict, routers: Sequence[str], *, model=None, model_name: str = "ppo", episodes: int = 3,
             seed: int = 0, deterministic: bool = True, lower_bound: bool = True,
             progress: Progress | None = None) -> EvaluationResult:
    """Run every router (and ``model``, if given) for ``episodes`` full episodes on the same
    workloads (episode k uses seed ``seed + k`` for every policy) and pool the results.

    :param env_kwargs: keyword arguments of :class:`VidurRoutingEnv` (the scenario).
    :param routers: registry names (see :data:`vidur_env.routers.ROUTERS`).
    :param model: an SB3 model (anything with ``predict``) to evaluate too, named ``model_name``.
    :param episodes: episodes per policy.
    :param seed: seed of episode 0 (workload draws and the routers' generators).
    :param deterministic: passed to ``model.predict``.
    :param lower_bound: add the no-queueing ``lower_bound`` row.
    :param progress: told the routing decisions of every finished episode (e.g. a bar's update).
    """
    names = check_router_names(routers)
    if not isinstance(episodes, int) or episodes < 1:
        raise EvaluationError(f"episodes: must be a positive integer, got {episodes!r}")
    if model is not None and (model_name in names or model_name == LOWER_BOUND):
        raise EvaluationError(f"model name {model_name!r} clashes with a router or the lower bound row")
    if not names and model is None:
        raise EvaluationError("nothing to evaluate: give at least one router or a model")
    env = VidurRoutingEnv(**env_kwargs)
    runs: dict[str, dict[str, Any]] = {}
    for name in names:
        act, reset = router_actor(name, env)
        runs[name] = run_episodes(env, act, episodes, seed, on_reset=reset, progress=progress)
    if model is not None:
        runs[model_name] = run_episodes(env, model_predictor(model, env, deterministic), episodes, seed,
                                        progress=progress)
    if lower_bound:
        runs[LOWER_BOUND] = lower_bound_episodes(env, episodes, seed)
    rows = {name: pooled_row(run) for name, run in runs.items()}
    per_episode = {name: episode_figures(run) for name, run in runs.items()}
    latencies = {name: {"e2e": np.concatenate(r["e2e"]), "ttft": np.concatenate(r["ttft"])} for name, r in runs.items()}
    settings = {"env_kwargs": env_kwargs, "scenario": describe_scenario(env), "episodes": episodes, "seed": seed,
                "deterministic": deterministic, "reward": env.reward_kind, "reward_scale": env.reward_scale,
                "episode_requests": env.num_requests}
    return EvaluationResult(rows, latencies, settings, per_episode)


DEFAULT_ALGORITHMS = ("sb3_contrib:MaskablePPO", "stable_baselines3:PPO")
"""What :func:`load_model` tries when no algorithm is named: a maskable model needs MaskablePPO
(which refuses other zips), every other PPO-family zip (KLPPO's included) loads as PPO."""


def algorithm_class(spec: str | type) -> type:
    """An SB3 algorithm class given itself or as ``"module:Class"`` (e.g. ``"sb3_klppo:KLPPO"``)."""
    if isinstance(spec, type):
        return spec
    module_name, _, class_name = str(spec).partition(":")
    if not module_name or not class_name:
        raise EvaluationError(f"algorithm {spec!r}: expected MODULE:CLASS, e.g. stable_baselines3:PPO")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except ImportError as error:
        raise EvaluationError(f"algorithm {spec!r}: cannot import {module_name} ({error})") from None
    except AttributeError:
        raise EvaluationError(f"algorithm {spec!r}: {module_name} has no {class_name}") from None
    if not callable(getattr(cls, "load", None)):
        raise EvaluationError(f"algorithm {spec!r}: {class_name} has no load(); give an SB3 algorithm class")
    return cls


def load_model(path: str | os.PathLike, algorithm: str | type | None = None):
    """Load an SB3 model zip with ``algorithm`` (a class or ``"module:Class"``), or by default
    with the first of :data:`DEFAULT_ALGORITHMS` that is installed and accepts the zip.

    The harness needs only ``predict``, so any SB3 algorithm class works; none is imported here
    unless asked for (vidur_env depends on no RL library).
    """
    path = str(path)
    if not (os.path.isfile(path) or os.path.isfile(path + ".zip")):
        raise EvaluationError(f"model file not found: {path}")
    if algorithm is not None:
        candidates = [algorithm_class(algorithm)]
    else:
        candidates = []
        for spec in DEFAULT_ALGORITHMS:
            try:
                candidates.append(algorithm_class(spec))
            except EvaluationError:
                continue  # not installed: the next default may be
    failures = []
    for cls in candidates:
        try:
            return cls.load(path, device="cpu")
        except Exception as error:  # each loader rejects foreign zips its own way
            failures.append(f"{cls.__name__}: {type(error).__name__}: {error}")
    if not candidates:
        raise EvaluationError(f"cannot load {path}: none of {', '.join(DEFAULT_ALGORITHMS)} is installed")
    raise EvaluationError(f"cannot load {path} as an SB3 model ({'; '.join(failures)})")
