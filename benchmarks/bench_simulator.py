"""Routing decisions per second of the simulator on the default scenario, single process.

Default scenario: 4 replicas of Llama-2-7B on A100 (TP1), Sarathi (chunk 512), the embedded
conversation-trace length distribution, Poisson arrivals at 85% of measured capacity, round
robin. Prints the rate with the fast paths (grouped decodes, decode-run loop) on and off (same
requests, same results), their ratio, the rate with the compact request table ``simulate``
uses (typed arrays instead of lists, same results) beside the lists', and optionally a cProfile
summary of where time goes.

Each path runs ``--repeats`` times, the paths taking turns; the best run is the figure (the
machine is a shared VM whose speed varies by up to 40% between runs, which only ever slows a
run down) and the median is printed next to it.

    python benchmarks/bench_simulator.py [--requests 20000] [--repeats 5] [--scheduler sarathi] [--profile]
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from dataclasses import replace

import numpy as np

from vidur_env.cluster import ClusterSimulator, build_time_models
from vidur_env.routers import make_router
from vidur_env.schedulers import SCHEDULER_NAMES
from vidur_env.simulation import Scenario, resolve_workload
from vidur_env.workload import generate_requests


def decisions_per_second(scenario: Scenario, requests, time_models, fast_forward: bool = True,
                         group_decodes: bool = True, compact: bool = False) -> tuple[float, ClusterSimulator]:
    sim = ClusterSimulator(scenario.cluster, requests, max_tokens=scenario.workload.max_tokens, time_models=time_models,
                           compact=compact)
    for replica in sim.replicas:
        replica.fast_forward = fast_forward
        replica.group_decodes = group_decodes
    router = make_router("round_robin")
    router.reset(sim.num_replicas, np.random.default_rng(0))
    start = time.process_time()  # CPU time of this process: robust to other load on the machine
    sim.run(router)
    return len(requests) / (time.process_time() - start), sim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--load", type=float, default=0.85)
    parser.add_argument("--repeats", type=int, default=5, help="runs per path; the best is reported")
    parser.add_argument("--scheduler", choices=SCHEDULER_NAMES, default="sarathi")
    parser.add_argument("--profile", action="store_true", help="print the top functions by own time")
    args = parser.parse_args()

    scenario = Scenario(load=args.load)
    cluster = replace(scenario.cluster, replica=replace(scenario.cluster.replica, scheduler=args.scheduler))
    scenario = replace(scenario, cluster=cluster, workload=replace(scenario.workload, num_requests=args.requests))
    time_models = build_time_models(scenario.cluster)
    workload = resolve_workload(scenario, time_models)
    requests = generate_requests(workload, np.random.default_rng(0))
    print(f"scenario: 4 x {scenario.cluster.replica.model} on {scenario.cluster.replica.device}, "
          f"{scenario.cluster.replica.scheduler}, {args.requests} requests at {workload.qps:.2f} req/s "
          f"({args.load:.0%} of capacity)")

    warm, sim = decisions_per_second(scenario, requests, time_models)  # fills the time-model memo

    def interleaved(*paths: dict[str, bool]) -> list[tuple[float, float]]:
        """(best, median) rate of each path, the paths taking turns so load changes hit them alike."""
        rates: list[list[float]] = [[] for _ in paths]
        for _ in range(args.repeats):
            for rate, path in zip(rates, paths):
                rate.append(decisions_per_second(scenario, requests, time_models, **path)[0])
        return [(max(rate), float(np.median(rate))) for rate in rates]

    (fast, fast_median), (compact, compact_median), (no_ff, no_ff_median), (exact, exact_median) = interleaved(
        {}, {"compact": True}, {"fast_forward": False}, {"fast_forward": False, "group_decodes": False})
    iterations = sum(r.stats.num_iterations for r in sim.replicas)
    busy = [r.stats.busy_time / max(sim.table.completed_at) for r in sim.replicas]
    print(f"replica busy fraction: {', '.join(f'{b:.2f}' for b in busy)}; "
          f"{iterations / len(requests):.1f} iterations per request")
    print(f"decisions/s (best of {args.repeats}, median in brackets)")
    print(f"  all fast paths      : {fast:,.0f} ({fast_median:,.0f}); first, cold-memo run: {warm:,.0f}")
    print(f"  compact table       : {compact:,.0f} ({compact_median:,.0f}); {compact / fast:.2f}x the lists' "
          f"(median {compact_median / fast_median:.2f}x), simulate's table")
    print(f"  no decode-run loop  : {no_ff:,.0f} ({no_ff_median:,.0f})")
    print(f"  per-request path    : {exact:,.0f} ({exact_median:,.0f}); Vidur's loop, no grouping")
    print(f"speed-up of the fast paths:  {fast / exact:.2f}x")
    print("(Vidur itself, timed side by side on the same requests: benchmarks/speed_vs_vidur.py)")

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        decisions_per_second(scenario, requests, time_models, True)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
