"""``python -m sb3_klppo suite``: train a router on registered scenarios and judge it against
every heuristic, on held-out workloads, with paired confidence intervals.

For each scenario of :data:`vidur_env.scenarios.SCENARIOS` asked for:

1. **Teacher**: unless the config names one, the warm-start teacher is the scenario's best
   heuristic by mean E2E on episodes of its *training* traffic (seeds :data:`TEACHER_SEED` on,
   used by nothing else), among the routers that can decide from observations (cloning needs that).
2. **Training**: one run of the training job (:func:`sb3_klppo.pipeline.run_training`) per seed,
   on the scenario's training distribution (randomised load, burstiness, lengths), each in
   ``D/<scenario>/seed_<k>``; ``--jobs`` runs seeds in parallel processes, ``--ray`` as Ray
   tasks (on this machine or a cluster), the engine the sweep runs its trials on.
3. **Evaluation** on the scenario's nominal traffic, episodes seeded from
   :data:`vidur_env.scenarios.EVALUATION_SEED` (never trained on): every registered heuristic
   that applies (the cache-aware ones where requests carry prefix keys) and each trained
   model, deterministic (``trained``) and sampled (``trained_sampled``). Episode k routes the
   same requests for every policy; the trained figure of an episode is the mean over the
   training seeds, and the paired t interval of its relative difference to each heuristic is
   taken over the episodes (:func:`vidur_env.paired.paired_difference`). Each seed's own
   difference to the best heuristic is kept too, so seed-to-seed spread is visible.
4. Optionally (``--replay TRACE``) the same models and heuristics on a replay of a trace on
   the same cluster at ``--replay-load`` of its capacity: traffic unlike the training draw.

Writes ``D/suite.json`` (:mod:`sb3_klppo.suite_report` documents the layout) and ``D/suite.md``
with its plot. A scenario whose directory already holds a finished ``scenario.json`` is read
back rather than run again (``--fresh`` reruns), so an interrupted suite resumes; a
``--replay`` it does not hold yet is then run on its saved models, without training again.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Optional, Sequence

import numpy as np

from sb3_klppo.config import ConfigError, TrainConfig
from sb3_klppo.pipeline import resolve_config, run_training
from sb3_klppo.suite_report import FIGURES, finite, write_suite
from vidur_env.config_flags import FieldFlag, add_field_flags, field_values
from vidur_env.scenarios import SCENARIOS, TrafficRange

NOMINAL_TRAFFIC = {name: None for name in TrafficRange.__dataclass_fields__}
"""A training distribution that draws nothing (what ``--traffic`` adds to where a scenario has none)."""

TEACHER_SEED = 500
"""First seed of the episodes the teacher is chosen on (training traffic; neither training nor
evaluation reuses them)."""
SCENARIO_FILE = "scenario.json"
"""A finished scenario's results, in its directory (what a resumed suite reads back)."""
TRAINED, SAMPLED = "trained", "trained_sampled"
"""Row names of the trained policy, acting deterministically and sampling its actions."""


@dataclasses.dataclass(frozen=True)
class SuiteArgs:
    """The suite's arguments, as typed on the command line: each field is one flag of
    ``python -m sb3_klppo suite`` (name, type, default and, from its docstring, help; see
    :mod:`vidur_env.config_flags`), except ``--set``, which repeats."""

    scenarios: Optional[str] = None
    """Comma-separated registered scenarios; None: all of them, in registration order."""
    seeds: int = 3
    """Training seeds per scenario: the config's seed, +1, ..."""
    output_dir: str = "runs/suite"
    """The suite's directory: suite.json, suite.md, suite.png and a directory per scenario."""
    config: Optional[str] = None
    """Base JSON or YAML training config (None: the built-in defaults)."""
    episodes: int = 40
    """Held-out evaluation episodes per policy (at least 2, for an interval). A p99 over one
    512-request episode swings by several percent, so 10 episodes leave intervals of about
    ±2% on p99 E2E, wider than a 1% margin to the best heuristic; 40 narrow them to about
    ±1% for a few minutes of simulation per scenario."""
    teacher_episodes: int = 4
    """Episodes of the training traffic the teacher is chosen on."""
    jobs: int = 1
    """Training runs at once, in separate processes (with ``--ray local``, the local Ray's CPUs)."""
    ray: Optional[str] = None
    """Train the seeds as Ray tasks, one CPU each, on the Ray the sweep uses: ``local`` starts one
    on this machine, ``auto`` or ``ray://HOST:10001`` joins a running cluster (whose nodes must
    see the output directory). None: processes on this machine."""
    replay: Optional[str] = None
    """Also evaluate on a replay of this trace file (with time stamps) on the same cluster."""
    replay_load: float = 0.8
    """The replay's arrival rate as a fraction of the cluster's capacity for its lengths."""
    replay_requests: int = 512
    """Requests per replay episode (each from a random row of the trace)."""
    episode_requests: Optional[int] = None
    """Decisions per episode in training and evaluation (None: the scenario's)."""
    env_kwargs: str = "{}"
    """JSON object of env keywords over each scenario's (and the config's env.kwargs), in training
    and evaluation, e.g. {"reward": "latency_ttft", "ttft_weight": 30} or {"output_predictor": "noisy"}."""
    traffic: str = "{}"
    """JSON object of training-distribution ranges over each scenario's own (the fields of
    vidur_env.scenarios.TrafficRange), in training only, e.g. {"devices": ["a100", "h100"]} to
    put each replica on a drawn device every episode, or {"load": [0.8, 0.95]}."""
    fresh: bool = False
    """Rerun scenarios whose results the directory already holds."""


SUITE_FLAGS = tuple(
    FieldFlag(name, note=f"Registered: {', '.join(SCENARIOS)}." if name == "scenarios" else "")
    for name in SuiteArgs.__dataclass_fields__
)
"""Every field of :class:`SuiteArgs` is a flag."""


@dataclasses.dataclass(frozen=True)
class SuiteSettings:
    """What the suite runs: :class:`SuiteArgs` checked and parsed (names resolved, JSON read)."""

    scenarios: tuple[str, ...]
    args: SuiteArgs
    base: TrainConfig
    """The training config every run starts from: ``--config`` with the ``--set`` overrides."""
    overrides: tuple[tuple[str, Any], ...] = ()
    env_extra: tuple[tuple[str, Any], ...] = ()
    traffic_extra: tuple[tuple[str, Any], ...] = ()
    """``--traffic``'s ranges, each replacing the scenario's own in training."""

    @property
    def output_dir(self) -> pathlib.Path:
        return pathlib.Path(self.args.output_dir)

    def env_kwargs(self, name: str, training: bool = False) -> dict[str, Any]:
        """The env kwargs of scenario ``name`` (its training distribution with ``training``), with
        ``episode_requests`` decisions per episode when set and ``--traffic``'s ranges over its
        training distribution's, then the base config's
        ``env.kwargs`` and the ``--env-kwargs`` on top (the same in training and evaluation, so a
        reward, output predictor or cache view matches the model)."""
        from vidur_env.scenarios import registered_scenario

        kwargs = registered_scenario(name).env_kwargs(training)
        if training and self.traffic_extra:
            kwargs["traffic"] = {**kwargs.get("traffic", NOMINAL_TRAFFIC), **dict(self.traffic_extra)}
        if self.args.episode_requests is not None:
            kwargs["num_requests"] = self.args.episode_requests
        kwargs.update(self.base.env.kwargs)
        kwargs.update(self.env_extra)
        return kwargs


def add_suite_parser(commands: Any) -> None:
    """The ``suite`` subcommand's arguments (``commands`` is the CLI's subparsers object)."""
    suite = commands.add_parser("suite", help="train and evaluate on registered scenarios; suite.json and suite.md")
    add_field_flags(suite, SuiteArgs(), SUITE_FLAGS)
    suite.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="config JSON key and value over the base config (as `train`'s flags read them), "
                            "e.g. ppo.total_timesteps=262144; repeat for more keys")


def settings_from_args(args: argparse.Namespace) -> SuiteSettings:
    """Checked settings from the parsed flags (a bad value raises :class:`ConfigError` naming its flag)."""
    from vidur_env.scenarios import registered_scenario

    given = SuiteArgs(**field_values(args, SUITE_FLAGS))
    scenarios = tuple(SCENARIOS) if given.scenarios is None else tuple(
        name.strip() for name in given.scenarios.split(",") if name.strip())
    if not scenarios:
        raise ConfigError("--scenarios: give at least one scenario name")
    for name in scenarios:
        try:
            registered_scenario(name)
        except ValueError as error:
            raise ConfigError(f"--scenarios: {error}") from None
    for flag, value, least in (("--seeds", given.seeds, 1), ("--episodes", given.episodes, 2),
                               ("--teacher-episodes", given.teacher_episodes, 1), ("--jobs", given.jobs, 1),
                               ("--replay-requests", given.replay_requests, 1),
                               ("--episode-requests", given.episode_requests or 1, 1)):
        if value < least:
            raise ConfigError(f"{flag}: must be at least {least}, got {value}")
    if given.ray is not None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError("--ray: needs Ray: pip install 'vidur-env[sweep]'") from None
    if not 0 < given.replay_load < 1.5:
        raise ConfigError(f"--replay-load: must be in (0, 1.5), got {given.replay_load}")
    try:
        env_extra = json.loads(given.env_kwargs)
    except json.JSONDecodeError as error:
        raise ConfigError(f"--env-kwargs: not JSON ({error.msg} at character {error.pos})") from None
    if not isinstance(env_extra, dict) or {"scenario", "traffic"} & set(env_extra):
        raise ConfigError("--env-kwargs: expected a JSON object of env keywords other than scenario and traffic "
                          "(the suite sets those)")
    traffic_extra = traffic_ranges(given.traffic)
    overrides = []
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        overrides.append((key.strip(), value))
    base = resolve_config(given.config, dict(overrides))  # a bad key or value fails before any training
    if {"scenario", "traffic"} & set(base.env.kwargs):
        raise ConfigError("env.kwargs of the base config: the suite sets scenario and traffic per scenario; "
                          "keep only other env keywords (a reward, an output predictor) there")
    settings = SuiteSettings(scenarios, given, base, tuple(overrides), tuple(env_extra.items()),
                             tuple(traffic_extra.items()))
    for name in scenarios:  # so does a bad env keyword
        make_env(settings.env_kwargs(name, training=True))
    if given.replay:
        check_replay(given.replay, given.replay_requests)
    return settings


def traffic_ranges(text: str) -> dict[str, Any]:
    """``--traffic``'s JSON object, each range checked as :class:`TrafficRange` checks it (a bad
    key or range raises :class:`ConfigError` naming ``--traffic``)."""
    try:
        ranges = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"--traffic: not JSON ({error.msg} at character {error.pos})") from None
    if not isinstance(ranges, dict):
        raise ConfigError(f"--traffic: expected a JSON object of training-distribution ranges, got {text}")
    TrafficRange.from_value({**NOMINAL_TRAFFIC, **ranges}, "--traffic")
    return ranges


def check_replay(trace: str, requests: int) -> None:
    """The replay trace must exist, parse, carry arrival times (a rate to scale) and hold the
    ``--replay-requests`` of an episode."""
    from vidur_env.traces import read_trace

    if not pathlib.Path(trace).is_file():
        raise ConfigError(f"--replay: no trace file at {trace}")
    try:
        rows = read_trace(trace)
    except ValueError as error:
        raise ConfigError(f"--replay: {error}") from None
    if rows.arrived_at is None or len(rows) < 2:
        raise ConfigError(f"--replay: {trace} has no arrival times (a length-only trace or a single row); "
                          "give a trace with time stamps")
    if requests > len(rows):
        raise ConfigError(f"--replay-requests: {requests} is more than the {len(rows)} rows of {trace}; "
                          f"ask for at most {len(rows)}")


# ---------------------------------------------------------------------------------------------
# One scenario: teacher, training, evaluation
# ---------------------------------------------------------------------------------------------


def make_env(kwargs: dict[str, Any]):
    """The routing env for ``kwargs`` (a bad keyword raises vidur_env's ConfigError, a ValueError)."""
    from vidur_env.env import VidurRoutingEnv

    return VidurRoutingEnv(**kwargs)


def heuristics_for(name: str) -> list[str]:
    """Every registered heuristic that means something on scenario ``name``: the load-only
    routers, plus the cache-aware ones where requests carry prefix keys and observations are
    fresh (they decide on the live simulator)."""
    from vidur_env.routers import ROUTERS, load_only_routers

    env = make_env({"scenario": name, "num_requests": 1})
    env.reset(seed=0)
    cache_aware = env.requests.block_hashes is not None and env.refresh_s == 0.0
    return load_only_routers() + ([r for r in ROUTERS if r not in load_only_routers()] if cache_aware else [])


def choose_teacher(settings: SuiteSettings, name: str, candidates: Sequence[str]) -> tuple[str, dict[str, float]]:
    """The candidate with the least mean E2E on the scenario's training traffic, each deciding
    from the env's observations as its clone will (a cache-aware router in the env's cache
    view); routers that cannot decide from observations are skipped. Also each one's figure."""
    from vidur_env.evaluation import router_predictor, run_episodes
    from vidur_env.routers import RouterPolicy

    env = make_env(settings.env_kwargs(name, training=True))
    figures = {}
    for router in candidates:
        policy = RouterPolicy(router)
        try:
            run = run_episodes(env, router_predictor(policy), settings.args.teacher_episodes, TEACHER_SEED,
                               on_reset=policy.reset)
        except ValueError:  # needs what the observation does not carry
            continue
        figures[router] = float(np.mean(np.concatenate(run["e2e"])))
    return min(figures, key=figures.get), figures


def train_one(config: str | None, overrides: dict[str, Any]) -> tuple[str, float]:
    """One training run (a worker process's job); the run directory and its seconds."""
    start = time.perf_counter()
    run_dir, _ = run_training(config, overrides)
    return str(run_dir), time.perf_counter() - start


def training_overrides(settings: SuiteSettings, name: str, teacher: str | None, seed: int) -> dict[str, Any]:
    """The base config's overrides for scenario ``name``'s run with ``seed``: its training
    distribution, the teacher, its own directory, no evaluation (the suite evaluates) and no
    learning curve unless the run keeps its best policy by it (``monitoring.keep_best``)."""
    overrides = dict(settings.overrides)
    overrides.update({
        "env.kwargs": json.dumps(settings.env_kwargs(name, training=True)),
        "seed": seed, "output_dir": str(settings.output_dir / name / f"seed_{seed}"),
        "number_runs": False, "overwrite": True, "evaluation.enabled": False,
        "monitoring.progress_bar": False, "monitoring.verbose": 0,
    })
    if settings.base.monitoring.keep_best is None:
        overrides["monitoring.curve_every"] = 0
    if teacher is not None:
        overrides["warm_start.expert"] = teacher
    return overrides


def train_seeds(settings: SuiteSettings, name: str, teacher: str | None) -> tuple[list[str], list[float]]:
    """Train every seed (``--jobs`` at once); the run directories and each run's seconds."""
    jobs = [training_overrides(settings, name, teacher, settings.base.seed + k) for k in range(settings.args.seeds)]
    configs = [settings.args.config] * len(jobs)
    if settings.args.ray is not None:
        runs = train_on_ray(settings.args.ray, settings.args.jobs, configs, jobs)
    elif settings.args.jobs == 1:
        runs = list(map(train_one, configs, jobs))
    else:
        with ProcessPoolExecutor(settings.args.jobs) as pool:
            runs = list(pool.map(train_one, configs, jobs))
    return [run_dir for run_dir, _ in runs], [seconds for _, seconds in runs]


def train_on_ray(address: str, num_cpus: int, configs: Sequence[str | None],
                 jobs: Sequence[dict[str, Any]]) -> list[tuple[str, float]]:
    """The training runs as Ray tasks of one CPU each, on the Ray the sweep connects to or
    starts (:func:`sb3_klppo.sweep_tune.start_ray`; ``num_cpus`` for a local one). A Ray this
    call started is shut down after; one already running is left to its owner."""
    import ray

    from sb3_klppo.sweep_tune import RayOptions, start_ray

    # a worker need not start in this directory: the config and the run directories by full path
    configs = [None if config is None else str(pathlib.Path(config).resolve()) for config in configs]
    jobs = [{**overrides, "output_dir": str(pathlib.Path(overrides["output_dir"]).resolve())} for overrides in jobs]
    started = start_ray(RayOptions(address=None if address == "local" else address, num_cpus=num_cpus))
    try:
        task = ray.remote(num_cpus=1)(train_one)
        return ray.get([task.remote(config, overrides) for config, overrides in zip(configs, jobs)])
    finally:
        if started:
            ray.shutdown()


def kept_steps(run_dirs: Sequence[str]) -> list[int] | None:
    """Per run, the training steps of the policy it kept (``monitoring.keep_best``), read from
    its summary.json; None when the runs kept their last policy."""
    curves = [json.loads((pathlib.Path(d) / "summary.json").read_text())["learning_curve"] for d in run_dirs]
    if any(curve is None or curve.get("kept_point") is None for curve in curves):
        return None
    return [int(curve["points"][curve["kept_point"]]["timesteps"]) for curve in curves]


def load_models(run_dirs: Sequence[str]) -> list[Any]:
    from sb3_klppo.klppo import KLPPO

    return [KLPPO.load(pathlib.Path(d) / "model.zip", device="cpu") for d in run_dirs]


@dataclasses.dataclass
class EpisodeTable:
    """One evaluation's figures: per policy and episode (the trained policy's the mean over its
    models), pooled per policy, each model's own per-episode figures (deterministic), and the
    harness's one-line description of what was simulated."""

    per_episode: dict[str, dict[str, list[float]]]
    rows: dict[str, dict[str, float]]
    per_seed: list[dict[str, list[float]]]
    described: str


def episode_table(env_kwargs: dict, heuristics: Sequence[str], models: Sequence[Any], episodes: int,
                  seed: int) -> EpisodeTable:
    """Per-episode figures and pooled rows of the heuristics and of the trained policy
    (deterministic and sampled; each episode's figure the mean over the models), same episodes."""
    from vidur_env.evaluation import evaluate

    result = evaluate(env_kwargs, heuristics, episodes=episodes, seed=seed)
    per_episode = {name: {f: list(result.episodes[name][f]) for f in FIGURES} for name in heuristics}
    rows = {name: {f: result.rows[name][f] for f in FIGURES} for name in result.rows}
    per_seed: dict[str, list[dict[str, list[float]]]] = {TRAINED: [], SAMPLED: []}
    for row_name, deterministic in ((TRAINED, True), (SAMPLED, False)):
        pooled = []
        for model in models:
            model.set_random_seed(seed)  # sampled actions reproducible by the evaluation seed
            run = evaluate(env_kwargs, [], model=model, model_name=row_name, episodes=episodes, seed=seed,
                           deterministic=deterministic, lower_bound=False)
            per_seed[row_name].append({f: list(run.episodes[row_name][f]) for f in FIGURES})
            pooled.append(run.rows[row_name])
        per_episode[row_name] = {f: list(np.mean([s[f] for s in per_seed[row_name]], axis=0)) for f in FIGURES}
        rows[row_name] = {f: float(np.mean([p[f] for p in pooled])) for f in FIGURES}
    return EpisodeTable(per_episode, rows, per_seed[TRAINED], result.settings["scenario"])


def comparisons(table: EpisodeTable, heuristics: Sequence[str]) -> dict[str, Any]:
    """Paired intervals of the trained policy (and its sampled form) against each heuristic, the
    best heuristic per figure, and each seed's difference to it."""
    from vidur_env.paired import paired_difference

    per_episode, rows = table.per_episode, table.rows
    best = {f: min(heuristics, key=lambda h: rows[h][f]) for f in FIGURES}
    paired = {
        row: {h: {f: paired_difference(per_episode[row][f], per_episode[h][f]).as_dict() for f in FIGURES}
              for h in heuristics}
        for row in (TRAINED, SAMPLED)
    }
    per_seed = {f: [float(np.mean(100.0 * (np.asarray(s[f]) / np.asarray(per_episode[best[f]][f]) - 1.0)))
                    for s in table.per_seed] for f in FIGURES}
    return {"best_heuristic": best, "paired": paired, "per_seed_vs_best_pct": per_seed}


def replay_kwargs(name: str, trace: str, load: float, requests: int) -> dict[str, Any]:
    """Env kwargs replaying ``trace`` on scenario ``name``'s cluster at ``load`` of its capacity
    for the trace's lengths: the trace's times scaled so its mean rate is ``load`` x capacity;
    each episode replays ``requests`` rows from a random offset (drawn from the episode's seed)."""
    from vidur_env.scenarios import registered_scenario
    from vidur_env.simulation import cluster_capacity
    from vidur_env.traces import read_trace
    from vidur_env.workload import WorkloadConfig

    entry = registered_scenario(name)
    scenario = entry.make()
    rows = read_trace(trace)
    span = float(rows.arrived_at[-1] - rows.arrived_at[0])
    rate = (len(rows) - 1) / span
    workload = WorkloadConfig(arrival="trace", lengths="trace", trace=trace, num_requests=requests,
                              max_tokens=scenario.workload.max_tokens)
    capacity = cluster_capacity(scenario.cluster, workload)
    return {"cluster": scenario.cluster, "load": None, "num_requests": requests,
            "workload": dataclasses.replace(workload, time_scale=rate / (load * capacity), trace_offset="random"),
            **entry.observation}


def run_scenario(settings: SuiteSettings, name: str) -> dict[str, Any]:
    """Teacher, training, evaluation (and replay) of one scenario; its part of suite.json."""
    from vidur_env.scenarios import EVALUATION_SEED, registered_scenario

    heuristics = heuristics_for(name)
    if not settings.base.warm_start.enabled:
        teacher, teacher_figures = None, {}
    elif "warm_start.expert" in dict(settings.overrides):
        teacher, teacher_figures = settings.base.warm_start.expert, {}
    else:
        teacher, teacher_figures = choose_teacher(settings, name, heuristics)
    run_dirs, seconds = train_seeds(settings, name, teacher)
    models = load_models(run_dirs)
    table = episode_table(settings.env_kwargs(name), heuristics, models, settings.args.episodes, EVALUATION_SEED)
    result: dict[str, Any] = {
        "description": registered_scenario(name).description, "simulated": table.described,
        "teacher": teacher, "teacher_e2e_mean": teacher_figures, "run_dirs": run_dirs,
        "training_seconds": seconds, "kept_steps": kept_steps(run_dirs), "policies": table.rows,
        **comparisons(table, heuristics),
        "episodes": table.per_episode,
    }
    if settings.args.replay:
        result["replay"] = replay_result(settings, name, models)
    return result


def replay_key(given: SuiteArgs) -> dict[str, Any]:
    """What identifies a replay evaluation: trace, load, requests per episode and episodes."""
    return {"trace": given.replay, "load": given.replay_load, "requests": given.replay_requests,
            "episodes": given.episodes}


def load_only_result(env_kwargs: dict[str, Any], models: Sequence[Any], episodes: int) -> dict[str, Any]:
    """The trained models and the load-only heuristics under ``env_kwargs``, on the held-out
    episodes: what was simulated, every policy's figures and the paired comparisons (the
    replay's part of a scenario's results; ``benchmarks/cluster_transfer.py`` judges other
    clusters with it)."""
    from vidur_env.routers import load_only_routers
    from vidur_env.scenarios import EVALUATION_SEED

    heuristics = load_only_routers()
    table = episode_table(env_kwargs, heuristics, models, episodes, EVALUATION_SEED)
    return {"simulated": table.described, "policies": table.rows, **comparisons(table, heuristics),
            "episodes": table.per_episode}


def replay_result(settings: SuiteSettings, name: str, models: Sequence[Any]) -> dict[str, Any]:
    """The trained models and the load-only heuristics on the ``--replay`` trace, on scenario
    ``name``'s cluster; its part of the scenario's results."""
    given = settings.args
    kwargs = replay_kwargs(name, given.replay, given.replay_load, given.replay_requests)
    return {**replay_key(given), **load_only_result(kwargs, models, given.episodes)}


def read_back(settings: SuiteSettings, name: str, done: pathlib.Path) -> dict[str, Any]:
    """A finished scenario's results; a ``--replay`` they lack (or hold for other settings) is
    run on its saved models, without training again, and added."""
    result = json.loads(done.read_text())
    if settings.args.replay and {k: result.get("replay", {}).get(k) for k in replay_key(settings.args)} \
            != replay_key(settings.args):
        result["replay"] = replay_result(settings, name, load_models(result["run_dirs"]))
        done.write_text(json.dumps(finite(result), indent=2))
    return result


def run_suite(settings: SuiteSettings) -> dict[str, Any]:
    """Every scenario in turn (finished ones read back unless ``fresh``); write suite.json and suite.md."""
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for name in settings.scenarios:
        done = settings.output_dir / name / SCENARIO_FILE
        if done.is_file() and not settings.args.fresh:
            results[name] = read_back(settings, name, done)
            continue
        start = time.perf_counter()
        results[name] = run_scenario(settings, name)
        results[name]["seconds"] = time.perf_counter() - start
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps(finite(results[name]), indent=2))
    meta = {"seeds": settings.args.seeds, "episodes": settings.args.episodes, "config": settings.args.config,
            "overrides": dict(settings.overrides), "env_kwargs": dict(settings.env_extra),
            "traffic": dict(settings.traffic_extra)}
    write_suite(settings.output_dir, results, meta)
    return results


def run_suite_command(args: argparse.Namespace) -> int:
    """``suite``: check the flags, run, print where the results are."""
    settings = settings_from_args(args)
    run_suite(settings)
    print(f"wrote {settings.output_dir / 'suite.json'} and {settings.output_dir / 'suite.md'}")
    return 0
