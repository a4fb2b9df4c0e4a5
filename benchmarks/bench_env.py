"""How fast the routing env is, and what share of SB3 PPO's training time it takes.

Measured in one run on the default scenario (4 x Llama-2-7B on A100, Sarathi, default lengths,
85% load, 512-request episodes):

1. sim-only: decisions per second of ``ClusterSimulator.run`` with round_robin (no env);
2. env: steps per second with random actions, observation building and reward included;
3. PPO: wall time of ``PPO.learn`` for ``n_steps * iterations`` steps against the time of the
   same number of env steps alone; their ratio is the env's share of PPO's wall time.

Speed figures are the best of ``--repeats`` interleaved runs. Usage:
``python benchmarks/bench_env.py [--episodes 20] [--ppo-iterations 2] [--profile]``.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import numpy as np
import torch as th
from gymnasium.utils import seeding

from vidur_env.cluster import ClusterSimulator
from vidur_env.env import VidurRoutingEnv
from vidur_env.routers import make_router
from vidur_env.workload import generate_requests


def sim_only(env: VidurRoutingEnv, episodes: int, seed: int = 0) -> float:
    """Decisions per second of the bare simulator on the env's workload draws (same draws as
    :func:`env_steps` with the same seed)."""
    total, elapsed = 0, 0.0
    rng, _ = seeding.np_random(seed)  # the generator env.reset(seed=seed) makes
    for _ in range(episodes):
        requests = generate_requests(env.workload, rng)
        start = time.perf_counter()
        sim = ClusterSimulator(env.cluster, requests, max_tokens=env.workload.max_tokens, time_models=env.time_models)
        router = make_router("round_robin")
        router.reset(sim.num_replicas, rng)
        sim.run(router)
        elapsed += time.perf_counter() - start
        total += len(requests)
    return total / elapsed


def env_steps(env: VidurRoutingEnv, steps: int, seed: int = 0, actions: str = "random") -> float:
    """Seconds for ``steps`` env steps (resets included) with random or round-robin actions.

    Round robin routes exactly as :func:`sim_only` does, so the difference is the env's own cost;
    random actions are the headline figure (they queue more, so the simulator works harder).
    """
    n = env.num_replicas
    chosen = np.random.default_rng(seed).integers(n, size=steps) if actions == "random" else None
    start = time.perf_counter()
    env.reset(seed=seed)
    k = 0
    for i in range(steps):
        _, _, terminated, truncated, _ = env.step(chosen[i] if chosen is not None else k % n)
        k += 1
        if terminated or truncated:
            env.reset()
            k = 0
    return time.perf_counter() - start


def adapter_time(env: VidurRoutingEnv, steps: int, seed: int = 0) -> tuple[float, float]:
    """(total seconds, seconds inside simulator calls) of ``steps`` random-action env steps.

    The simulator methods the env calls are wrapped with timers (nested calls counted once), so
    the difference is the env's own work (observation, reward, bookkeeping) measured in the
    same run, immune to load changes between runs.
    """
    inside, depth = 0.0, 0

    def timed(method):
        def wrapper(*args):
            nonlocal inside, depth
            depth += 1
            start = time.perf_counter()
            try:
                return method(*args)
            finally:
                depth -= 1
                if depth == 0:
                    inside += time.perf_counter() - start
        return wrapper

    def instrument() -> None:
        for name in ("advance_to", "advance_to_next_arrival", "dispatch", "drain"):
            setattr(env.simulator, name, timed(getattr(env.simulator, name)))

    actions = np.random.default_rng(seed).integers(env.num_replicas, size=steps)
    start = time.perf_counter()
    env.reset(seed=seed)
    instrument()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
            instrument()
    return time.perf_counter() - start, inside


def ppo_share(iterations: int, n_steps: int) -> tuple[float, float]:
    """(PPO.learn seconds, env-alone seconds) for ``iterations * n_steps`` steps, one env."""
    from stable_baselines3 import PPO

    env = VidurRoutingEnv()
    model = PPO("MlpPolicy", env, n_steps=n_steps, seed=0, device="cpu", verbose=0)
    model.learn(n_steps)  # warm-up: torch initialisation, first allocations
    start = time.perf_counter()
    model.learn(iterations * n_steps, reset_num_timesteps=False)
    ppo = time.perf_counter() - start
    return ppo, env_steps(VidurRoutingEnv(), iterations * n_steps)


def profile_env(env: VidurRoutingEnv, steps: int, top: int = 20) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    env_steps(env, steps)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=20, help="512-request episodes for the speed figures")
    parser.add_argument("--repeats", type=int, default=3, help="speed measurements repeated, best kept")
    parser.add_argument("--ppo-iterations", type=int, default=2, help="PPO iterations of n_steps (0 skips PPO)")
    parser.add_argument("--n-steps", type=int, default=2048, help="PPO rollout length")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch CPU threads for PPO (default 1)")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile summary of env stepping")
    args = parser.parse_args()

    env = VidurRoutingEnv()
    env_steps(env, 2048)  # warm the time model's memo, as a training run would
    steps = args.episodes * env.num_requests
    sim_rate = rr_rate = env_rate = 0.0
    for _ in range(args.repeats):  # interleaved, best of: robust to other load on the machine
        sim_rate = max(sim_rate, sim_only(env, args.episodes))
        rr_rate = max(rr_rate, steps / env_steps(env, steps, actions="round_robin"))
        env_rate = max(env_rate, steps / env_steps(env, steps, actions="random"))
    overhead_us = (1 / rr_rate - 1 / sim_rate) * 1e6
    print(f"sim-only (round_robin):       {sim_rate:10.0f} decisions/s")
    print(f"env, round-robin actions:     {rr_rate:10.0f} steps/s   "
          f"(env/sim {rr_rate / sim_rate:.2f}: adapter overhead {overhead_us:.1f} us/step)")
    print(f"env, random actions:          {env_rate:10.0f} steps/s")
    total, inside = adapter_time(env, steps)
    print(f"in one run: env's own work    {(total - inside) / steps * 1e6:10.1f} us/step "
          f"= {(total - inside) / total:.1%} of step time (simulator {inside / steps * 1e6:.1f} us/step)")
    if args.ppo_iterations > 0:
        th.set_num_threads(args.torch_threads)
        ppo, alone = ppo_share(args.ppo_iterations, args.n_steps)
        total = args.ppo_iterations * args.n_steps
        print(f"PPO.learn {total} steps:       {ppo:10.2f} s   ({total / ppo:.0f} steps/s)")
        print(f"same env steps alone:         {alone:10.2f} s   -> env share of PPO wall time {alone / ppo:.1%}")
    if args.profile:
        print(profile_env(VidurRoutingEnv(), steps))


if __name__ == "__main__":
    main()
