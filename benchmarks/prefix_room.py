"""Where a prefix scenario's TTFT goes, per router: what the cache already gives, what is left.

Each router runs the same held-out episodes of the scenario (episode k seeded
``EVALUATION_SEED + k``, as the suite evaluates). Per router this prints

- its cache hits (prompt tokens served from cache) as a share of three totals: every prompt
  token; the *reachable* ones (:func:`vidur_env.kv_cache.reachable_hit_tokens`: the leading
  blocks some earlier request computed, what the ``lower_bound`` row starts from); and the
  ones *computed by admission*: leading blocks some request had computed somewhere in the
  cluster by the time this one was admitted, in that run's own timing (a prompt block once its
  request's prefill completed, an output block once its request completed), which is what a
  router that knew every cache could have hit;
- mean TTFT split into queueing (arrival to first scheduled) and the prefill span (scheduled
  to first token), its p99, and the ``lower_bound`` row's mean and p99 TTFT.

A router that hits nearly every token computed by admission has no cache room left: what is
between its TTFT and the bound is queueing and the decode batches its prefill chunks share.

    python benchmarks/prefix_room.py [--scenario prefix] [--episodes 3]
        [--routers vllm_prefix_precise aibrix_prefix round_robin least_work_left]
"""
from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from vidur_env.env import VidurRoutingEnv
from vidur_env.evaluation import EvaluationError, router_actor, run_episodes
from vidur_env.kv_cache import BLOCK_SIZE, max_hit_blocks, reachable_hit_tokens
from vidur_env.request_table import BlockHashes, RequestTable
from vidur_env.routers import ROUTERS
from vidur_env.scenarios import EVALUATION_SEED, SCENARIOS


def computed_by_admission(table: RequestTable, hashes: list[BlockHashes]) -> np.ndarray:
    """Per request, the prompt tokens of its leading blocks (capped as a hit is) that some
    request had computed by its admission: a prompt block once its request's prefill
    completed, an output block once its request completed."""
    ready: dict[int, float] = {}
    for rid, keys in enumerate(hashes):
        if keys is None:
            continue
        prompt_blocks = table.orig_prefill[rid] // BLOCK_SIZE
        for index, key in enumerate(keys):
            when = table.prefill_completed_at[rid] if index < prompt_blocks else table.completed_at[rid]
            ready[key] = min(when, ready.get(key, np.inf))
    tokens = np.zeros(len(hashes))
    for rid, keys in enumerate(hashes):
        if keys is None:
            continue
        admitted, blocks = table.scheduled_at[rid], 0
        for key in keys[: max_hit_blocks(table.orig_prefill[rid])]:
            if ready.get(key, np.inf) > admitted:
                break
            blocks += 1
        tokens[rid] = blocks * BLOCK_SIZE
    return tokens


def run_episode(env: VidurRoutingEnv, name: str, seed: int) -> RequestTable:
    """One episode routed by the registered router ``name``; the finished request table."""
    act, reset = router_actor(name, env)
    run_episodes(env, act, 1, seed, on_reset=reset)
    return env.simulator.table


def measure(env: VidurRoutingEnv, name: str, episodes: int) -> dict[str, np.ndarray]:
    """Per-request columns of ``name``'s episodes, concatenated."""
    columns: dict[str, list[np.ndarray]] = defaultdict(list)
    for k in range(episodes):
        table = run_episode(env, name, EVALUATION_SEED + k)
        hashes = env.requests.block_hashes or [None] * len(table)
        prompts = np.asarray(table.orig_prefill)
        arrived, scheduled = np.asarray(table.arrived_at), np.asarray(table.scheduled_at)
        first_token = np.asarray(table.prefill_completed_at)
        columns["prompt"].append(prompts)
        columns["hit"].append(np.asarray(table.cached_tokens))
        columns["reachable"].append(np.asarray(reachable_hit_tokens(prompts.tolist(), hashes)))
        columns["computed"].append(computed_by_admission(table, hashes))
        columns["queue"].append(scheduled - arrived)
        columns["span"].append(first_token - scheduled)
        columns["ttft"].append(first_token - arrived)
        columns["bound"].append(env.isolated_latencies(env.requests)[0])
    return {key: np.concatenate(parts) for key, parts in columns.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="prefix", choices=list(SCENARIOS))
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--routers", nargs="+", choices=list(ROUTERS), metavar="ROUTER",
                        default=["vllm_prefix_precise", "aibrix_prefix", "round_robin", "least_work_left"])
    args = parser.parse_args()
    if args.episodes < 1:
        parser.error(f"--episodes: must be at least 1, got {args.episodes}")
    env = VidurRoutingEnv(scenario=args.scenario)
    print(f"{args.scenario}, {args.episodes} held-out episodes of {env.num_requests} requests; hits as a share of "
          "all prompt tokens / the reachable ones / those computed by admission; TTFT in ms")
    print(f"{'router':<22} {'hit/prompt':>10} {'hit/reach':>9} {'hit/computed':>12}  {'TTFT':>6} {'queue':>6} "
          f"{'span':>6} {'bound':>6}  {'p99':>6} {'bound':>6}")
    for name in args.routers:
        try:
            m = measure(env, name, args.episodes)
        except EvaluationError as error:
            parser.error(str(error))
        shares = [m["hit"].sum() / m[total].sum() for total in ("prompt", "reachable", "computed")]
        means = [1e3 * m[key].mean() for key in ("ttft", "queue", "span", "bound")]
        p99s = [1e3 * np.percentile(m[key], 99) for key in ("ttft", "bound")]
        print(f"{name:<22} {shares[0]:>10.3f} {shares[1]:>9.3f} {shares[2]:>12.3f}  "
              + " ".join(f"{x:>6.1f}" for x in means) + "  " + " ".join(f"{x:>6.1f}" for x in p99s), flush=True)


if __name__ == "__main__":
    main()
