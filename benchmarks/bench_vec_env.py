"""Rollout speed of in-process against subprocess env copies (``ppo.vec_env``), side by side.

Steps rollouts (the job's own ``make_vec_env``, actions from a ``ReplicaSetPolicy``) with
``dummy`` and ``subproc`` copies of the configured env, alternating the two in every repeat,
and prints env steps per second (wall clock: the point of subprocesses is to overlap env work
on several cores) and the speed-up of ``subproc`` over ``dummy``::

    python benchmarks/bench_vec_env.py --n-envs 2 4 --steps 256 --repeats 3
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch as th

from sb3_klppo import KLPPO
from sb3_klppo.config import TrainConfig
from sb3_klppo.pipeline import make_vec_env


def rollout_rate(config: TrainConfig, steps: int) -> float:
    """Env steps per wall-clock second of ``steps`` rollout steps per env, each action drawn
    from an (untrained) ``ReplicaSetPolicy`` as in a PPO rollout."""
    venv = make_vec_env(config, seed=0)
    try:
        model = KLPPO(config.ppo.policy, venv, n_steps=steps, batch_size=steps, verbose=0, seed=0)
        obs = venv.reset()
        start = time.perf_counter()
        for _ in range(steps):
            actions, _ = model.predict(obs, deterministic=False)
            obs, _, _, _ = venv.step(actions)
        return steps * venv.num_envs / (time.perf_counter() - start)
    finally:
        venv.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-envs", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--steps", type=int, default=256, help="rollout steps per env")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    th.set_num_threads(1)
    base = TrainConfig()
    print(f"{'n_envs':>6} {'dummy steps/s':>14} {'subproc steps/s':>16} {'speed-up':>9}  (median of {args.repeats})")
    for n in args.n_envs:
        rates: dict[str, list[float]] = {"dummy": [], "subproc": []}
        for _ in range(args.repeats):
            for kind in rates:
                config = replace(base, ppo=replace(base.ppo, n_envs=n, vec_env=kind))
                rates[kind].append(rollout_rate(config, args.steps))
        dummy, subproc = statistics.median(rates["dummy"]), statistics.median(rates["subproc"])
        print(f"{n:>6} {dummy:>14,.0f} {subproc:>16,.0f} {subproc / dummy:>8.2f}x")


if __name__ == "__main__":
    main()
