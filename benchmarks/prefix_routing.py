"""Every router (load-only and cache-aware) on shared-prefix workloads, side by side.

Two workloads, each run once per router with the same requests (same seed):

1. the registered ``prefix`` scenario (:func:`vidur_env.simulation.prefix_scenario`: multi-turn
   sessions on Zipf-popular shared system prompts, 4 x Llama-3.1-8B, 85% of capacity);
2. the Mooncake trace (``$VIDUR_SHARED_DATA/traces/mooncake_synthetic_trace.jsonl``; skipped
   with a note when absent): its first ``--mooncake-requests`` rows replayed on
   ``--mooncake-replicas`` Llama-3.1-8B replicas (128k context, so only prompts beyond 128k
   tokens are cut; the count is printed), times stretched by ``--mooncake-time-scale``.

Per router: TTFT and E2E mean and p99 (s), prefix-cache hit rate (prompt tokens served from
cache / prompt tokens, the simulator's ``prefix_cache_hit_rate``; "n/a" when the simulator has
no prefix cache), throughput (completed requests / makespan) and routing speed (decisions per
second of router time alone, and of the whole simulation with that router; the capacity probe
and the workload draw are done once per workload, outside the timings).

Without prefix caching in the simulator, nothing is ever served from cache: cache-aware routers
then only concentrate load (approximate views) or see empty caches (precise views), so their
latencies show the cost of affinity, not its benefit. Prefix caching is switched on in every
replica where ``ReplicaConfig`` has ``prefix_caching``. With ``--paired-seeds N`` the prefix scenario and a hot-prefix variant (:data:`HOT`) also run
on N seeds each, every router's TTFT compared seed by seed with the load-only baselines
(:data:`PAIRED_BASELINES`) by a paired t interval (:mod:`vidur_env.paired`). Usage:
``python benchmarks/prefix_routing.py [--routers a,b] [--seed 0] [--mooncake-requests 1000] [--paired-seeds 5]``.
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from vidur_env.cluster import build_time_models
from vidur_env.config import ClusterConfig, ReplicaConfig
from vidur_env.paired import paired_difference
from vidur_env.routers import ROUTERS, make_router
from vidur_env.scenarios import named_scenario
from vidur_env.simulation import Scenario, resolve_workload, run_simulation
from vidur_env.sessions import SessionConfig
from vidur_env.workload import Requests, WorkloadConfig, generate_requests

MOONCAKE = "traces/mooncake_synthetic_trace.jsonl"
"""The Mooncake trace, relative to the shared data directory."""


def shared_data() -> Path:
    """``$VIDUR_SHARED_DATA``, else ../shared/data beside the project (as the tests find it)."""
    override = os.environ.get("VIDUR_SHARED_DATA")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "shared" / "data"


class TimedRouter:
    """A router that adds up the wall time of its decisions."""

    def __init__(self, name: str) -> None:
        self.router = make_router(name)
        self.seconds = 0.0
        self.decisions = 0

    def reset(self, num_replicas, rng) -> None:
        self.router.reset(num_replicas, rng)

    def __call__(self, sim, rid: int) -> int:
        start = time.perf_counter()
        choice = self.router.choose(sim, rid)
        self.seconds += time.perf_counter() - start
        self.decisions += 1
        return choice


def mooncake_scenario(path: Path, requests: int, replicas: int, time_scale: float) -> Scenario:
    """The Mooncake trace replayed on Llama-3.1-8B replicas (128k context)."""
    replica = ReplicaConfig(model="llama-3.1-8b", prefix_caching=True)
    workload = WorkloadConfig(arrival="trace", lengths="trace", trace=str(path), num_requests=requests,
                              max_tokens=131072, time_scale=time_scale)
    return Scenario(cluster=ClusterConfig(num_replicas=replicas, replica=replica), workload=workload, load=None)


def fixed(scenario: Scenario, seed: int) -> tuple[Scenario, Requests]:
    """The scenario at its resolved arrival rate (capacity measured once) and its requests
    (drawn once), so every router serves the same requests and the timings are routing and
    simulation only."""
    workload = resolve_workload(scenario, build_time_models(scenario.cluster))
    return replace(scenario, workload=workload, load=None), generate_requests(workload, np.random.default_rng(seed))


def row(name: str, scenario: Scenario, requests: Requests, seed: int) -> dict:
    """One router's figures on ``scenario`` serving ``requests``."""
    router = TimedRouter(name)
    start = time.perf_counter()
    result = run_simulation(scenario, router, seed=seed, requests=requests)
    wall = time.perf_counter() - start
    m = result.metrics
    hit = m.get("prefix_cache_hit_rate")
    return {
        "router": name,
        "ttft_mean": m["prefill_e2e_time"]["mean"], "ttft_p99": m["prefill_e2e_time"]["p99"],
        "e2e_mean": m["request_e2e_time"]["mean"], "e2e_p99": m["request_e2e_time"]["p99"],
        "hit_rate": "n/a" if hit is None else f"{hit:.3f}",
        "throughput": m["num_requests"] / m["makespan"],
        "route_per_s": router.decisions / max(router.seconds, 1e-12),
        "sim_per_s": m["num_requests"] / wall,
        "cut": m["requests_cut_to_max_tokens"],
    }


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n## {title}\n")
    print(f"{'router':<28} {'TTFT mean':>9} {'TTFT p99':>9} {'E2E mean':>9} {'E2E p99':>9} {'hit':>6} "
          f"{'req/s':>7} {'route/s':>9} {'sim/s':>7}")
    for r in rows:
        print(f"{r['router']:<28} {r['ttft_mean']:>9.3f} {r['ttft_p99']:>9.3f} {r['e2e_mean']:>9.3f} "
              f"{r['e2e_p99']:>9.3f} {r['hit_rate']:>6} {r['throughput']:>7.2f} {r['route_per_s']:>9.0f} "
              f"{r['sim_per_s']:>7.0f}")
    if rows and rows[0]["cut"]:
        print(f"\n{rows[0]['cut']} requests longer than max_tokens were cut (their prompts shortened).")


PAIRED_BASELINES = ("round_robin", "jsq")
"""Load-only routers every router is compared with, seed by seed, in the paired tables."""

PAIRED_METRICS = ("ttft_mean", "ttft_p99", "e2e_mean")
"""The lower-is-better figures the paired tables compare."""

HOT = SessionConfig(num_system_prompts=16, zipf_alpha=2.0)
"""A few hot prefixes: Zipf 2.0 over the 16 system prompts gives the hottest 63% of sessions."""


def paired_table(title: str, scenario: Scenario, names: list[str], seeds: int) -> None:
    """Mean TTFT / E2E over ``seeds`` seeds per router, and the paired relative difference of
    TTFT mean and p99 against each load-only baseline (t interval over the seeds; ``tie`` when
    it contains zero)."""
    workload = resolve_workload(scenario, build_time_models(scenario.cluster))
    scenario = replace(scenario, workload=workload, load=None)
    runs: dict[str, list[dict]] = {n: [] for n in dict.fromkeys([*PAIRED_BASELINES, *names])}
    for seed in range(seeds):
        requests = generate_requests(workload, np.random.default_rng(seed))
        for name in runs:
            runs[name].append(row(name, scenario, requests, seed))
    print(f"\n## {title}: {seeds} seeds\n")
    print(f"{'router':<28} {'TTFT mean':>9} {'TTFT p99':>9} {'E2E mean':>9} {'hit':>6}")
    for name, rows in runs.items():
        hits = [float(r["hit_rate"]) for r in rows if r["hit_rate"] != "n/a"]
        hit = f"{np.mean(hits):.3f}" if hits else "n/a"
        print(f"{name:<28} " + " ".join(f"{np.mean([r[m] for r in rows]):>9.3f}" for m in PAIRED_METRICS) + f" {hit:>6}")
    for base in PAIRED_BASELINES:
        print(f"\npaired against {base} (% change per seed, mean ± 95% t interval; tie when it holds 0)\n")
        print(f"{'router':<28} " + " ".join(f"{m:>28}" for m in PAIRED_METRICS))
        for name, rows in runs.items():
            if name == base:
                continue
            diffs = [paired_difference([r[m] for r in rows], [r[m] for r in runs[base]]) for m in PAIRED_METRICS]
            print(f"{name:<28} " + " ".join(f"{str(d) + ' ' + d.verdict:>28}" for d in diffs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--routers", default=",".join(sorted(ROUTERS)), help="comma-separated registry names")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prefix-requests", type=int, default=None, help="requests of the prefix scenario")
    parser.add_argument("--mooncake-requests", type=int, default=1000)
    parser.add_argument("--mooncake-replicas", type=int, default=8)
    parser.add_argument("--mooncake-time-scale", type=float, default=2.0)
    parser.add_argument("--paired-seeds", type=int, default=0,
                        help="also run the prefix scenario and its hot-prefix variant on this many seeds, paired")
    args = parser.parse_args()
    names = [n for n in args.routers.split(",") if n]
    prefix = named_scenario("prefix")
    if args.prefix_requests:
        prefix = replace(prefix, workload=replace(prefix.workload, num_requests=args.prefix_requests))
    prefix, requests = fixed(prefix, args.seed)
    print_table("prefix scenario", [row(n, prefix, requests, args.seed) for n in names])
    if args.paired_seeds:
        base = named_scenario("prefix")
        if args.prefix_requests:
            base = replace(base, workload=replace(base.workload, num_requests=args.prefix_requests))
        paired_table("prefix scenario", base, names, args.paired_seeds)
        hot = replace(base, workload=replace(base.workload, sessions=HOT))
        paired_table(f"hot prefixes (Zipf {HOT.zipf_alpha:g} over {HOT.num_system_prompts} system prompts)", hot,
                     names, args.paired_seeds)
    path = shared_data() / MOONCAKE
    if not path.is_file():
        print(f"\n## Mooncake trace: skipped ({path} not found; set VIDUR_SHARED_DATA)")
        return
    mooncake = mooncake_scenario(path, args.mooncake_requests, args.mooncake_replicas, args.mooncake_time_scale)
    mooncake, requests = fixed(mooncake, args.seed)
    print_table(f"Mooncake trace ({args.mooncake_requests} rows, {args.mooncake_replicas} replicas, "
                f"times x{args.mooncake_time_scale:g})", [row(n, mooncake, requests, args.seed) for n in names])


if __name__ == "__main__":
    main()
