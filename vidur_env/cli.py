"""Command line: ``python -m vidur_env simulate ...`` (and the subcommands other modules add).

Every user error (bad flag value, unreadable or malformed file, unknown model) ends with a
one-line message on stderr and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from vidur_env.cluster import SimulationError
from vidur_env.config import SCHEDULER_NAMES, ClusterConfig, ConfigError, ReplicaConfig, load_replica_configs
from vidur_env.evaluation import evaluate, load_model
from vidur_env.hardware import UnknownSpecError
from vidur_env.metrics import write_json
from vidur_env.routers import ROUTERS
from vidur_env.simulation import Scenario, run_simulation
from vidur_env.time_model import TimeModelError
from vidur_env.traces import TraceFormatError
from vidur_env.workload import WorkloadConfig, WorkloadConfigError

USER_ERRORS = (ConfigError, UnknownSpecError, TimeModelError, TraceFormatError, WorkloadConfigError, SimulationError, OSError)


def add_scenario_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags describing the cluster, the workload and the load level (shared by subcommands)."""
    cluster = parser.add_argument_group("cluster")
    cluster.add_argument("--replicas", type=int, default=4, help="number of identical replicas (default 4)")
    cluster.add_argument("--model", default=ReplicaConfig.model, help="model name or alias (default Llama-2-7B)")
    cluster.add_argument("--device", default=ReplicaConfig.device, help="a100 or h100 (default a100)")
    cluster.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (default 1)")
    cluster.add_argument("--scheduler", choices=SCHEDULER_NAMES, default="sarathi", help="replica batching scheduler")
    cluster.add_argument("--chunk-size", type=int, default=512, help="Sarathi token budget per iteration")
    cluster.add_argument("--batch-size-cap", type=int, default=128, help="most requests a replica holds at once")
    cluster.add_argument("--num-blocks", type=int, default=None, help="KV blocks per replica (default: Vidur's memory planner)")
    cluster.add_argument("--replica-config", default=None, metavar="FILE",
                         help="heterogeneous cluster: JSON list of replica objects (model, device, tensor_parallel, "
                              "scheduler, ...); overrides --replicas and the per-replica flags")
    cluster.add_argument("--profiling-dir", default=None,
                         help="use Vidur-format profiling CSVs from this directory instead of the built-in time model")
    cluster.add_argument("--extrapolate", action="store_true", help="let the profiled time model extrapolate off its grid")
    cluster.add_argument("--keying", choices=("vidur", "vidur_pypi"), default="vidur",
                         help="time-lookup keys of Vidur main (default) or of the 0.0.26 PyPI build")
    work = parser.add_argument_group("workload")
    work.add_argument("--num-requests", type=int, default=WorkloadConfig.num_requests, help="requests to simulate")
    work.add_argument("--arrival", choices=("poisson", "gamma", "static", "trace"), default=None,
                      help="arrival process (default poisson, or trace with --trace)")
    work.add_argument("--load", type=float, default=0.85,
                      help="arrival rate as a fraction of measured cluster capacity (poisson/gamma; default 0.85)")
    work.add_argument("--qps", type=float, default=None, help="arrival rate in requests/s (overrides --load)")
    work.add_argument("--cv", type=float, default=None, help="coefficient of variation of Gamma inter-arrivals")
    work.add_argument("--lengths", choices=("default", "fixed", "uniform", "zipf", "trace"), default=None,
                      help="request length distribution (default: embedded conversation-trace fit, or trace with --trace)")
    work.add_argument("--trace", default=None, help="trace file: Vidur CSV, Vidur lengths CSV, Azure CSV or Mooncake JSONL")
    work.add_argument("--trace-format", choices=("auto", "vidur", "vidur_lengths", "azure", "mooncake"), default="auto")
    work.add_argument("--time-scale", type=float, default=1.0, help="multiply trace inter-arrival times by this")
    work.add_argument("--max-tokens", type=int, default=4096, help="longest request (prompt + output), as in Vidur")


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    """Map parsed flags onto the typed scenario (validation happens in the dataclasses)."""
    replica = ReplicaConfig(
        model=args.model, device=args.device, tensor_parallel=args.tp, scheduler=args.scheduler,
        chunk_size=args.chunk_size, batch_size_cap=args.batch_size_cap, num_blocks=args.num_blocks,
    )
    cluster = ClusterConfig(
        num_replicas=args.replicas, replica=replica,
        replicas=load_replica_configs(args.replica_config) if args.replica_config else None,
        time_model="profiled" if args.profiling_dir else "builtin", profiling_dir=args.profiling_dir,
        keying=args.keying, extrapolate=args.extrapolate,
    )
    workload = WorkloadConfig(num_requests=args.num_requests, max_tokens=args.max_tokens, time_scale=args.time_scale)
    if args.trace:
        workload = replace(workload, trace=args.trace, trace_format=args.trace_format, arrival="trace", lengths="trace")
    if args.arrival:
        workload = replace(workload, arrival=args.arrival)
    if args.lengths:
        workload = replace(workload, lengths=args.lengths)
    if args.cv is not None:
        workload = replace(workload, cv=args.cv)
    load = args.load
    if args.qps is not None:
        workload, load = replace(workload, qps=args.qps), None
    return Scenario(cluster=cluster, workload=workload, load=load)


def cmd_simulate(args: argparse.Namespace) -> int:
    result = run_simulation(scenario_from_args(args), router=args.router, seed=args.seed)
    if args.output_json:
        write_json(result.metrics, args.output_json)
    if args.output_csv:
        result.requests.write_csv(args.output_csv)
    json.dump(result.metrics, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vidur_env", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    simulate = commands.add_parser("simulate", help="simulate a cluster with a heuristic router; print metrics as JSON")
    add_scenario_arguments(simulate)
    simulate.add_argument("--router", choices=sorted(ROUTERS), default="round_robin", help="routing policy")
    simulate.add_argument("--seed", type=int, default=0, help="seed of the workload draw and random routers")
    simulate.add_argument("--output-json", default=None, help="also write the aggregate metrics here")
    simulate.add_argument("--output-csv", default=None, help="write per-request metrics (Vidur column names) here")
    simulate.set_defaults(handler=cmd_simulate)
    add_evaluate_parser(commands)
    return parser


DEFAULT_EVAL_ROUTERS = "round_robin,random,lor,jsq,power_of_two,least_kv,least_work_left,vllm_dp"


def add_evaluate_parser(commands: argparse._SubParsersAction) -> None:
    """The ``evaluate`` subcommand. Its ``--model`` is the SB3 model zip, so the served LLM,
    ``--model`` in ``simulate``, is ``--llm`` here."""
    evaluate_parser = commands.add_parser(
        "evaluate", help="compare routers (and a trained SB3 model) on the same workloads; table, JSON, CDF plot",
        conflict_handler="resolve")
    add_scenario_arguments(evaluate_parser)
    evaluate_parser.add_argument("--llm", dest="model", default=ReplicaConfig.model,
                                 help="served model name or alias (simulate's --model; default Llama-2-7B)")
    evaluate_parser.add_argument("--routers", default=DEFAULT_EVAL_ROUTERS,
                                 help=f"comma-separated router names (default: all; from {', '.join(sorted(ROUTERS))})")
    evaluate_parser.add_argument("--model", dest="model_path", default=None, metavar="PATH.zip",
                                 help="also evaluate this SB3 model zip (see --algorithm)")
    evaluate_parser.add_argument("--algorithm", default=None, metavar="MODULE:CLASS",
                                 help="SB3 class that loads the model, e.g. sb3_klppo:KLPPO "
                                      "(default: sb3_contrib:MaskablePPO if it accepts the zip, else stable_baselines3:PPO)")
    evaluate_parser.add_argument("--model-name", default=None, help="row name of the model (default: file stem)")
    evaluate_parser.add_argument("--episodes", type=int, default=3, help="episodes per policy (default 3)")
    evaluate_parser.add_argument("--seed", type=int, default=0, help="episode k uses seed S+k for every policy")
    evaluate_parser.add_argument("--episode-requests", type=int, default=None,
                                 help="routing decisions per episode (default: --num-requests)")
    evaluate_parser.add_argument("--reward", choices=("latency", "ttft", "slo"), default="latency",
                                 help="reward whose return is reported (slo needs --slo-ttft and/or --slo-e2e)")
    evaluate_parser.add_argument("--slo-ttft", type=float, default=None, help="TTFT SLO in seconds (reward slo)")
    evaluate_parser.add_argument("--slo-e2e", type=float, default=None, help="E2E SLO in seconds (reward slo)")
    evaluate_parser.add_argument("--obs-refresh-ms", type=float, default=0.0,
                                 help="observation staleness, as the model was trained with (default 0: fresh)")
    evaluate_parser.add_argument("--oracle", action="store_true", help="observations include the output length")
    evaluate_parser.add_argument("--stochastic", action="store_true", help="sample the model's actions")
    evaluate_parser.add_argument("--output-dir", default=".",
                                 help="where evaluation.json and latency_cdf.png are written (default: .)")
    evaluate_parser.set_defaults(handler=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    routers = [name for name in args.routers.split(",") if name.strip()]
    model = load_model(args.model_path, args.algorithm) if args.model_path else None
    model_name = args.model_name or (Path(args.model_path).stem if args.model_path else "ppo")
    env_kwargs = {
        "scenario": scenario_from_args(args),
        "num_requests": args.episode_requests or args.num_requests,
        "reward": args.reward, "slo_ttft_s": args.slo_ttft, "slo_e2e_s": args.slo_e2e,
        "obs_refresh_ms": args.obs_refresh_ms, "oracle": args.oracle,
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


def run_command(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a subcommand, turning user errors into a message and exit status 2."""
    try:
        return handler(args)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.handler, args)
