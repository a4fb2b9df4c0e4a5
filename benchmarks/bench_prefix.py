"""Routing decisions per second of whole simulations: the ``prefix`` scenario (prefix caching
on) per router, side by side with the ``default`` scenario (caching off), in one run.

Each configuration simulates the same requests (drawn once per scenario, with the capacity
probe, outside the timings) ``--repeats`` times; repeats are interleaved across
configurations so a change in the machine's speed hits all of them alike. The figure is
requests / CPU seconds of this process (``time.process_time``: robust to other processes
waiting for the same cores), best of the repeats, with the median in brackets; the shared
VM only ever slows a run down. Issue 11's bar: at least 10,000 decisions/s on ``prefix``.

    python benchmarks/bench_prefix.py [--requests 4000] [--repeats 5] [--routers a,b] [--profile NAME]
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
from vidur_env.scenarios import named_scenario
from vidur_env.simulation import Scenario, resolve_workload
from vidur_env.workload import generate_requests

ROUTERS = ("round_robin", "sglang_cache_aware", "sglang_cache_aware_precise", "llmd_scorer", "dynamo_kv",
           "vllm_prefix", "aibrix_prefix", "consistent_hash")
"""Load-only round robin and every cache-aware router in its default view (sglang in both)."""


class Prepared:
    """A scenario with its arrival rate resolved and its requests drawn, ready to time."""

    def __init__(self, name: str, requests: int) -> None:
        scenario = named_scenario(name)
        scenario = replace(scenario, workload=replace(scenario.workload, num_requests=requests))
        self.scenario: Scenario = scenario
        self.time_models = build_time_models(scenario.cluster)
        self.workload = resolve_workload(scenario, self.time_models)
        self.requests = generate_requests(self.workload, np.random.default_rng(0))

    def decisions_per_second(self, router_name: str) -> float:
        """Requests / CPU seconds of one whole simulation routed by ``router_name``."""
        sim = ClusterSimulator(self.scenario.cluster, self.requests, max_tokens=self.workload.max_tokens,
                               time_models=self.time_models)
        router = make_router(router_name)
        router.reset(sim.num_replicas, np.random.default_rng(0))
        start = time.process_time()
        sim.run(router)
        return len(self.requests) / (time.process_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="requests per simulation (both scenarios)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per configuration; the best is reported")
    parser.add_argument("--routers", default=",".join(ROUTERS), help="comma-separated routers for the prefix scenario")
    parser.add_argument("--profile", metavar="ROUTER", help="also print a cProfile summary of prefix with ROUTER")
    args = parser.parse_args()
    scenarios = {name: Prepared(name, args.requests) for name in ("default", "prefix")}
    configs = [("default", "round_robin")] + [("prefix", r) for r in args.routers.split(",") if r]
    for scenario, router in configs:  # warm-up: fills the time models' memo
        scenarios[scenario].decisions_per_second(router)
    rates: dict[tuple[str, str], list[float]] = {config: [] for config in configs}
    for _ in range(args.repeats):
        for scenario, router in configs:
            rates[scenario, router].append(scenarios[scenario].decisions_per_second(router))
    print(f"{args.requests} requests per simulation; decisions/s = requests / CPU s, best of {args.repeats} "
          f"(median)")
    default = max(rates["default", "round_robin"])
    for (scenario, router), values in rates.items():
        best = max(values)
        print(f"  {scenario:<8} {router:<28} {best:>8,.0f} ({np.median(values):>8,.0f})  "
              f"{best / default:5.2f}x default  {'ok' if scenario == 'default' or best >= 10_000 else 'below 10,000'}")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        scenarios["prefix"].decisions_per_second(args.profile)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
