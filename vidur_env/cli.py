"""Command line: ``python -m vidur_env simulate ...`` (and the subcommands other modules add).

Every user error (bad flag value, unreadable or malformed file, unknown model) ends with a
one-line message on stderr and exit status 2, never a traceback; advice in those messages
names this command's flags. What a run changes in the user's input or guesses (requests cut
to ``--max-tokens``, times extrapolated off a profiling grid) is counted in the JSON output and
noted in one line on stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn, Optional

import numpy as np

from vidur_env.cache_view import CACHE_VIEWS
from vidur_env.config import SCHEDULER_NAMES, VLLM_BATCH_RULES, load_replica_configs
from vidur_env.config_flags import FieldFlag, add_field_flags, field_values, typed_spellings
from vidur_env.errors import UNSET, ConfigError, Spelling, python_spelling, spell_settings_with
from vidur_env.env import OUTPUT_PREDICTORS
from vidur_env.evaluation import evaluate, load_model
from vidur_env.hardware import DEVICES
from vidur_env.metrics import CSV_LAYOUTS, DEFAULT_CSV_LAYOUT, write_json
from vidur_env.reward import DEFAULT_REWARD, REWARDS, RewardSettings
from vidur_env.routers import DEFAULT_ROUTER, ROUTERS, load_only_routers
from vidur_env.scenarios import DEFAULT_SCENARIO, SCENARIOS, named_scenario, registered_scenario
from vidur_env.simulation import Scenario, run_simulation
from vidur_env.time_model import KEYINGS, PROFILE_FITS
from vidur_env.traces import FORMAT_CHOICES as TRACE_FORMAT_CHOICES
from vidur_env.traces import SAMPLE_TRACES, ZERO_TOKEN_POLICIES
from vidur_env.workload import ARRIVALS, LENGTHS, WorkloadConfig, generate_requests, uses_trace

USER_ERRORS = (ConfigError, OSError)
"""What a subcommand reports in one line with exit status 2: every vidur_env user error (one
family, rooted in :class:`~vidur_env.errors.ConfigError`) and unreadable or unwritable files."""


class OneLineErrorParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line (``prog: error: ...``), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def non_negative_int(text: str) -> int:
    """argparse type of seeds: an integer >= 0 (NumPy's generators refuse negative seeds)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def trace_offset(text: str) -> int | str:
    """argparse type of --trace-offset: a row number >= 0 or ``random``."""
    return text if text == "random" else non_negative_int(text)


CLUSTER_FLAGS = (
    FieldFlag("num_replicas", aliases=("--replicas",)),
    FieldFlag("profiling_dir", metavar="DIR", note="Giving it switches to the profiled time model."),
    FieldFlag("profile_fit", choices=PROFILE_FITS),
    FieldFlag("forest_seed", parse=non_negative_int),
    FieldFlag("keying", choices=tuple(KEYINGS)),
    FieldFlag("kv_granularity", metavar="TOKENS"),
)
"""The :class:`ClusterConfig` fields that are flags (see :mod:`vidur_env.config_flags`)."""

REPLICA_FLAGS = (
    FieldFlag("model", metavar="NAME"),
    FieldFlag("device", metavar="NAME", note=f"Known: {', '.join(DEVICES)}."),
    FieldFlag("tensor_parallel", aliases=("--tp",)),
    FieldFlag("scheduler", choices=SCHEDULER_NAMES),
    FieldFlag("chunk_size"),
    FieldFlag("batch_size_cap"),
    FieldFlag("max_tokens_in_batch"),
    FieldFlag("vllm_batch_rule", choices=VLLM_BATCH_RULES),
    FieldFlag("num_blocks"),
    FieldFlag("memory_margin_fraction"),
    FieldFlag("watermark_fraction"),
    FieldFlag("prefix_caching"),
)
"""The :class:`ReplicaConfig` fields that are flags, for every replica of a homogeneous cluster."""

WORKLOAD_FLAGS = (
    FieldFlag("cv"),
    FieldFlag("poisson_clip"),
    FieldFlag("prefill_tokens"),
    FieldFlag("decode_tokens"),
    FieldFlag("min_tokens"),
    FieldFlag("max_tokens_uniform"),
    FieldFlag("prefill_to_decode_ratio"),
    FieldFlag("zipf_theta"),
    FieldFlag("zipf_scramble"),
    FieldFlag("trace", metavar="FILE",
              note=f"Giving it sets --arrival and --lengths to trace unless they are given. Shipped traces: "
                   f"{', '.join(SAMPLE_TRACES)}."),
    FieldFlag("trace_format", choices=TRACE_FORMAT_CHOICES),
    FieldFlag("trace_zero_tokens", choices=ZERO_TOKEN_POLICIES),
    FieldFlag("trace_offset", metavar="ROW|random", parse=trace_offset),
    FieldFlag("time_scale"),
    FieldFlag("prefill_scale"),
    FieldFlag("decode_scale"),
    FieldFlag("max_tokens"),
    FieldFlag("allow_beyond_context"),
)
"""The :class:`WorkloadConfig` fields that are flags; ``num_requests``, ``arrival``,
``lengths`` and ``qps`` have flags of their own in :func:`add_scenario_arguments`."""


def add_scenario_arguments(parser: argparse.ArgumentParser, base: Scenario) -> None:
    """Flags describing the cluster, the workload and the load level (shared by subcommands).

    Most are config fields (:data:`CLUSTER_FLAGS`, :data:`REPLICA_FLAGS`,
    :data:`WORKLOAD_FLAGS`), named, typed and documented by their dataclass. A flag's ``dest``
    is the config field it sets, so error advice can name the flag (:func:`flag_spelling`), and
    its default is that field's value in ``base`` (the scenario ``--scenario`` names), so a flag
    given overrides the scenario and one left out keeps it."""
    cluster_base, work_base = base.cluster, base.workload
    parser.add_argument("--scenario", choices=tuple(SCENARIOS), default=DEFAULT_SCENARIO,
                        help="a registered scenario the other flags start from (default %(default)s; "
                             "flags given override its values): "
                             + "; ".join(f"{name}: {entry.description}" for name, entry in SCENARIOS.items()).replace("%", "%%"))
    cluster = parser.add_argument_group("cluster")
    add_field_flags(cluster, cluster_base, CLUSTER_FLAGS)
    grid = cluster.add_mutually_exclusive_group()
    grid.add_argument("--strict-grid", dest="extrapolate", action="store_false", default=cluster_base.extrapolate,
                      help="with --profiling-dir: a lookup outside the profiled grid is an error (default: it is "
                           "answered, by the forests or by the grid's nearest value, and counted in the output's "
                           "out_of_grid_lookups)")
    grid.add_argument("--extrapolate", dest="extrapolate", action="store_true", default=cluster_base.extrapolate,
                      help="deprecated, does nothing: extrapolation is the default now; accepted so old commands run")
    add_field_flags(cluster, cluster_base.replica, REPLICA_FLAGS)
    cluster.add_argument("--replica-config", default=None, metavar="FILE",
                         help="heterogeneous cluster: JSON list of replica objects (model, device, tensor_parallel, "
                              "scheduler, ...); overrides --num-replicas and the per-replica flags")
    work = parser.add_argument_group("workload")
    work.add_argument("--num-requests", type=int, default=None,
                      help=f"requests to simulate (default {work_base.num_requests}; with --trace: every row)")
    work.add_argument("--arrival", choices=ARRIVALS, default=None,
                      help=f"arrival process (default {work_base.arrival}, or trace with --trace)")
    work.add_argument("--load", type=float, default=base.load,
                      help="arrival rate as a fraction of measured cluster capacity (poisson/gamma; "
                           "default %(default)s)")
    work.add_argument("--qps", type=float, default=None, help="arrival rate in requests/s (overrides --load)")
    work.add_argument("--lengths", choices=LENGTHS, default=None,
                      help=f"request length distribution (default {work_base.lengths}: the embedded "
                           "conversation-trace fit, or trace with --trace)")
    add_field_flags(work, work_base, WORKLOAD_FLAGS)


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    """Map parsed flags onto the typed scenario named by ``--scenario`` (validation happens in
    the dataclasses). Every flag's default is the scenario's value, so this changes only what
    was given, and keeps what no flag reaches (e.g. the ``prefix`` scenario's sessions)."""
    base = named_scenario(args.scenario)
    replica = replace(base.cluster.replica, **field_values(args, REPLICA_FLAGS))
    cluster = replace(
        base.cluster, replica=replica, extrapolate=args.extrapolate, **field_values(args, CLUSTER_FLAGS),
        replicas=load_replica_configs(args.replica_config) if args.replica_config else base.cluster.replicas,
    )
    if args.profiling_dir != base.cluster.profiling_dir:
        cluster = replace(cluster, time_model="profiled" if args.profiling_dir else "builtin")
    workload = replace(base.workload, **field_values(args, WORKLOAD_FLAGS))
    if args.trace != base.workload.trace:
        workload = replace(workload, arrival="trace", lengths="trace")
    if args.arrival:
        workload = replace(workload, arrival=args.arrival)
    if args.lengths:
        workload = replace(workload, lengths=args.lengths)
    if args.num_requests is not None:
        workload = replace(workload, num_requests=args.num_requests)
    elif uses_trace(workload):
        workload = replace(workload, num_requests=None)
    load = args.load
    if args.qps is not None:
        workload, load = replace(workload, qps=args.qps), None
    return Scenario(cluster=cluster, workload=workload, load=load)


def note_cut_requests(num_cut: int, num_requests: int, workload: WorkloadConfig, where: str, after: str) -> None:
    """One stderr line when requests from the user's trace were shortened to fit --max-tokens
    (the embedded default distribution is cut too, by design; its count is only in the JSON)."""
    if num_cut and workload.lengths == "trace":
        part = "prompts were" if workload.arrival == "trace" else "prompts and outputs were"
        print(f"note: {num_cut} of {num_requests} trace requests{where} had more than --max-tokens "
              f"{workload.max_tokens} prompt + output tokens; their {part} shortened to fit, as Vidur does{after}",
              file=sys.stderr)


def note_out_of_grid(lookups: int) -> None:
    """One stderr line when profiled execution times were extrapolated off the profiling grid."""
    if lookups:
        print(f"note: {lookups} execution-time lookups fell outside the profiled grid and were extrapolated "
              "(out_of_grid_lookups in the JSON; --strict-grid makes them errors)", file=sys.stderr)


def check_output_paths(args: argparse.Namespace, flags: Sequence[str]) -> None:
    """Output files must be writable where they are asked for; checked before a run, so a
    typo in a directory name does not cost the run's results."""
    for flag in flags:
        path = getattr(args, flag.lstrip("-").replace("-", "_"))
        if path is not None and not Path(path).resolve().parent.is_dir():
            raise ConfigError(f"{flag}: directory {Path(path).parent} does not exist (for {path})")


def write_output(flag: str, path: str, write: Callable[[str], None]) -> None:
    """``write(path)``, an OSError naming the flag and the file."""
    try:
        write(path)
    except OSError as error:
        raise ConfigError(f"{flag}: cannot write {path} ({error.strerror})") from None


def cmd_simulate(args: argparse.Namespace) -> int:
    check_output_paths(args, ("--output-json", "--output-csv"))
    staleness = registered_scenario(args.scenario).observation.get("obs_refresh_ms")
    if staleness:
        raise ConfigError(f"--scenario {args.scenario}: routers there observe the replicas every {staleness:g} ms, "
                          "which only routers reading the env's observations do; simulate routes on the live state. "
                          f"Run: python -m vidur_env evaluate --scenario {args.scenario}")
    scenario = scenario_from_args(args)
    try:  # the per-request CSV is written while the run goes
        result = run_simulation(scenario, router=args.router, seed=args.seed, csv_path=args.output_csv,
                                csv_layout=args.csv_columns)
    except OSError as error:
        if args.output_csv is None or error.filename != args.output_csv:
            raise
        raise ConfigError(f"--output-csv: cannot write {args.output_csv} ({error.strerror})") from None
    metrics = result.metrics
    note_cut_requests(metrics["requests_cut_to_max_tokens"], metrics["num_requests"], scenario.workload,
                      "", " (requests_cut_to_max_tokens in the JSON)")
    note_out_of_grid(result.metrics["out_of_grid_lookups"])
    if args.output_json:
        write_output("--output-json", args.output_json, lambda path: write_json(metrics, path))
    json.dump(result.metrics, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def build_parser(scenario: str = DEFAULT_SCENARIO) -> argparse.ArgumentParser:
    """The parser of every subcommand, its scenario flags defaulting to the registered
    ``scenario``'s values (:func:`scenario_named_in` finds the name in a command line)."""
    base = named_scenario(scenario)
    parser = OneLineErrorParser(prog="python -m vidur_env", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    simulate = commands.add_parser("simulate", help="simulate a cluster with a heuristic router; print metrics as JSON")
    add_scenario_arguments(simulate, base)
    simulate.add_argument("--router", choices=sorted(ROUTERS), default=DEFAULT_ROUTER, help="routing policy")
    simulate.add_argument("--seed", type=non_negative_int, default=0, help="seed of the workload draw and random routers")
    simulate.add_argument("--output-json", default=None, help="also write the aggregate metrics here")
    simulate.add_argument("--output-csv", default=None,
                          help="write per-request metrics here, in request order, while the run goes (header as "
                               "Vidur's request_metrics.csv by default)")
    simulate.add_argument("--csv-columns", choices=tuple(CSV_LAYOUTS), default=DEFAULT_CSV_LAYOUT,
                          help="--output-csv layout: vidur (Vidur's request_metrics.csv column names and order, the "
                               "columns this simulator computes) or full (adds replica ids and raw timestamps, "
                               "snake_case attribute names)")
    simulate.set_defaults(handler=cmd_simulate, spelling_for=partial(flag_spelling, simulate))
    add_evaluate_parser(commands, base)
    return parser


def scenario_named_in(argv: Sequence[str]) -> str:
    """The registered scenario ``--scenario NAME`` (or ``--scenario=NAME``, or an abbreviation the
    full parser accepts too) names in ``argv``, or the default one; an unknown name is left to the
    full parser, whose error lists the choices."""
    finder = argparse.ArgumentParser(add_help=False)
    finder.add_argument("--scenario", default=DEFAULT_SCENARIO)
    name = finder.parse_known_args(argv)[0].scenario
    return name if name in SCENARIOS else DEFAULT_SCENARIO


@dataclass(frozen=True)
class EvaluateArgs:
    """``evaluate``'s own arguments beyond the scenario's (each field one flag, see
    :mod:`vidur_env.config_flags`); the env's keywords keep their names here."""

    routers: str = ",".join(load_only_routers())
    """Comma-separated router names (default: every registered load-only router)."""
    agent: Optional[str] = None
    """Also evaluate this trained SB3 model zip (see --algorithm)."""
    algorithm: Optional[str] = None
    """SB3 class that loads the agent, as MODULE:CLASS, e.g. sb3_klppo:KLPPO (None: sb3_contrib's
    MaskablePPO if it accepts the zip, else stable_baselines3's PPO)."""
    agent_name: Optional[str] = None
    """Row name of the agent (None: the zip's file stem)."""
    episodes: int = 3
    """Episodes per policy."""
    seed: int = 0
    """Episode k uses seed S+k for every policy (an integer >= 0)."""
    episode_requests: Optional[int] = None
    """Routing decisions per episode, the env's num_requests (None: --num-requests)."""
    reward: str = DEFAULT_REWARD
    """Reward whose return is reported (slo needs --slo-ttft-s and/or --slo-e2e-s)."""
    slo_ttft_s: Optional[float] = None
    """TTFT SLO in seconds (reward slo)."""
    slo_e2e_s: Optional[float] = None
    """E2E SLO in seconds (reward slo)."""
    ttft_weight: float = RewardSettings.ttft_weight
    """Weight of TTFT in reward latency_ttft."""
    obs_refresh_ms: Optional[float] = None
    """Observation staleness, as the agent was trained with (None: the scenario's, 0 = fresh
    unless it sets one)."""
    cache_view: str = "auto"
    """Cache columns of the observation, as the agent was trained with (auto: the scenario's,
    none unless it sets one)."""
    output_predictor: str = OUTPUT_PREDICTORS[0]
    """What observations say of a request's output length: nothing, the truth or a noisy prediction."""
    predictor_error: float = 0.5
    """Log-normal sigma of the noisy output predictor."""
    stochastic: bool = False
    """Sample the agent's actions instead of taking the most likely."""
    output_dir: str = "."
    """Where evaluation.json and latency_cdf.png are written."""


def evaluate_flags() -> tuple[FieldFlag, ...]:
    """Every field of :class:`EvaluateArgs` as a flag named like the env's keyword (``--slo-ttft``
    and ``--slo-e2e`` stay accepted), choices read from the registries when the parser is built."""
    return (
        FieldFlag("routers", note=f"Registered: {', '.join(sorted(ROUTERS))}."),
        FieldFlag("agent", metavar="PATH.zip"), FieldFlag("algorithm", metavar="MODULE:CLASS"),
        FieldFlag("agent_name"), FieldFlag("episodes"), FieldFlag("seed", parse=non_negative_int, metavar="N"),
        FieldFlag("episode_requests"), FieldFlag("reward", choices=tuple(REWARDS)),
        FieldFlag("slo_ttft_s", aliases=("--slo-ttft",)), FieldFlag("slo_e2e_s", aliases=("--slo-e2e",)),
        FieldFlag("ttft_weight"), FieldFlag("obs_refresh_ms"),
        FieldFlag("cache_view", choices=("auto", "none", *CACHE_VIEWS)),
        FieldFlag("output_predictor", choices=OUTPUT_PREDICTORS), FieldFlag("predictor_error"),
        FieldFlag("stochastic"), FieldFlag("output_dir"),
    )


def add_evaluate_parser(commands: argparse._SubParsersAction, base: Scenario) -> None:
    """The ``evaluate`` subcommand. ``--model`` is the served LLM, as in ``simulate`` and the env;
    a trained SB3 policy is an ``--agent``, so the two never share a flag."""
    evaluate_parser = commands.add_parser(
        "evaluate", help="compare routers (and a trained SB3 agent) on the same workloads; table, JSON, CDF plot")
    add_scenario_arguments(evaluate_parser, base)
    add_field_flags(evaluate_parser.add_argument_group("evaluation"), EvaluateArgs(), evaluate_flags())
    evaluate_parser.set_defaults(handler=cmd_evaluate, spelling_for=partial(flag_spelling, evaluate_parser))


def cmd_evaluate(args: argparse.Namespace) -> int:
    routers = [name for name in args.routers.split(",") if name.strip()]
    if args.model.endswith(".zip"):
        raise ConfigError(f"--model {args.model}: --model names the served LLM; give a trained SB3 model zip "
                          "with --agent")
    model = load_model(args.agent, args.algorithm) if args.agent else None
    model_name = args.agent_name or (Path(args.agent).stem if args.agent else "ppo")
    scenario = scenario_from_args(args)
    episode_requests = scenario.workload.num_requests if args.episode_requests is None else args.episode_requests
    first_episode = replace(scenario.workload, num_requests=episode_requests)
    if first_episode.lengths == "trace":
        requests = generate_requests(first_episode, np.random.default_rng(args.seed))
        note_cut_requests(requests.num_cut, len(requests), first_episode, " of the first episode", "")
    obs_refresh_ms, cache_view = registered_scenario(args.scenario).observation_settings(
        args.obs_refresh_ms, None if args.cache_view == "none" else args.cache_view)
    env_kwargs = {
        "scenario": scenario,
        "num_requests": episode_requests,
        "reward": args.reward, "slo_ttft_s": args.slo_ttft_s, "slo_e2e_s": args.slo_e2e_s,
        "ttft_weight": args.ttft_weight,
        "obs_refresh_ms": obs_refresh_ms, "cache_view": cache_view,
        "output_predictor": args.output_predictor, "predictor_error": args.predictor_error,
    }
    result = evaluate(env_kwargs, routers, model=model, model_name=model_name, episodes=args.episodes,
                      seed=args.seed, deterministic=not args.stochastic)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result.to_json(out / "evaluation.json")
    result.plot_latency_cdf(out / "latency_cdf.png")
    sys.stdout.write(result.table())
    print(f"wrote {out / 'evaluation.json'} and {out / 'latency_cdf.png'}")
    return 0


def flag_spelling(parser: argparse.ArgumentParser, typed: Mapping[str, str] = MappingProxyType({})) -> Spelling:
    """How ``parser``'s user sets a config field: the flag whose ``dest`` is the field, spelled as
    the user typed it (``typed``: dest -> spelling, for flags with aliases) or by its field name.

    ``max_tokens`` -> ``--max-tokens``; ``num_requests=None`` (the flag's default) ->
    ``--num-requests left out``; ``extrapolate=True`` -> ``--strict-grid left out``;
    ``tensor_parallel`` -> ``--tp`` after ``--tp 3``, else ``--tensor-parallel``; a field
    without a flag keeps its Python spelling.
    """
    actions: dict[str, argparse.Action] = {}
    for action in parser._actions:
        long_flags = [flag for flag in action.option_strings if flag.startswith("--")]
        if long_flags and action.dest not in actions:
            actions[action.dest] = action

    def spell(name: str, value: Any = UNSET) -> str:
        action = actions.get(name)
        if action is None:
            return python_spelling(name, value)
        flag = typed.get(name) or max(action.option_strings, key=len)
        if isinstance(action, argparse.BooleanOptionalAction):
            flag = action.option_strings[0 if value is UNSET or value else 1]
        if value is UNSET:
            return flag
        if value == action.default:
            return f"{flag} left out"
        if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):
            return flag
        return f"{flag} {value}"

    return spell


def note_warning(message: Warning | str, *_: Any, **__: Any) -> None:
    """Show a warning (e.g. trace rows dropped by --trace-zero-tokens) as one ``note:`` line."""
    print(f"note: {message}", file=sys.stderr)


def run_command(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a subcommand, turning user errors into a message and exit status 2 and warnings
    into one-line notes."""
    spelling_for = getattr(args, "spelling_for", None)
    spelling = python_spelling if spelling_for is None else spelling_for(typed_spellings(args))
    try:
        with spell_settings_with(spelling), warnings.catch_warnings():
            warnings.showwarning = note_warning
            return handler(args)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(scenario_named_in(argv)).parse_args(argv)
    return run_command(args.handler, args)
