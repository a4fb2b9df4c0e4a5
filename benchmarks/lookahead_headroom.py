"""How much room the registered heuristics leave: routers that simulate where a request would go.

Every registered heuristic scores replicas by counts (queued work, prompt tokens, cache hits).
A router can instead *simulate*: copy each replica, add the incoming request, run the copy
forward with no later arrivals, and send the request where its first token (objective
``ttft``) or its last (``e2e``) would come soonest. Replicas are deterministic given their
state and the requests routed to them, so two versions say different things:

- ``lookahead`` copies the live simulator's replicas: the exact current state and the true
  output lengths. It is not a router one could deploy; it says how far a one-step greedy
  decision with perfect information gets on these requests.
- ``twin:LENGTHS`` reads *no* replica state. It keeps a shadow simulation of the cluster fed
  only with what a router knows without observing anything: the arrivals, its own decisions
  and a prediction of each output length (``prior``: every output the observation's prior of
  210 tokens; ``noisy:SIGMA``: the truth times a mean-one log-normal factor, as the env's
  ``output_predictor="noisy"``; ``oracle``: the truth, which makes it ``lookahead`` exactly),
  and decides by the lookahead on the shadow. Since it observes nothing it needs no fresh
  observations, so it is a fair router on the stale scenarios too.

Each runs the suite's held-out episodes of a scenario (the same requests as the heuristics)
and is compared, as the scenario suite compares the trained router (``sb3_klppo.suite``),
with the best registered heuristic *per figure*: paired over episodes, 95% t intervals,
lower is better, and "meets" where issue 12's bar would hold (10% better on one figure with
the interval off zero, no figure more than 2% worse). Nothing is tuned on the episodes.

    python benchmarks/lookahead_headroom.py [--scenarios stale1000 hetero] [--episodes 40]
        [--objectives ttft e2e] [--routers lookahead twin:prior twin:noisy:0.5]
"""
from __future__ import annotations

import argparse
import copy
import time
from math import inf

import numpy as np

from routing_headroom import bar_cells, heuristic_baseline
from sb3_klppo.suite_report import FIGURES, TITLES
from vidur_env.cluster import ClusterSimulator
from vidur_env.env import VidurRoutingEnv
from vidur_env.evaluation import episode_figures, run_episodes
from vidur_env.observation import EXPECTED_OUTPUT_TOKENS
from vidur_env.scenarios import EVALUATION_SEED, SCENARIOS
from vidur_env.workload import Requests

OBJECTIVES = ("ttft", "e2e")
READ_ONLY_COLUMNS = ("arrived_at", "orig_prefill", "orig_decode", "block_hashes")


def request_outcome(sim: ClusterSimulator, replica_id: int, rid: int) -> tuple[float, float]:
    """(first-token time, completion time) of request ``rid`` were it sent to ``replica_id``
    now: a copy of that replica (with the request table) gets the request and runs until it
    has no work left. What the simulation never writes (the time model, the request columns
    fixed at arrival, the prefix keys) is shared with the original, not copied."""
    replica = sim.replicas[replica_id]
    shared = [replica.time_model] + [getattr(sim.table, name) for name in READ_ONLY_COLUMNS]
    twin = copy.deepcopy(replica, {id(value): value for value in shared})
    twin.add_request(rid, sim.now)
    twin.advance_to(inf)
    return twin.table.prefill_completed_at[rid], twin.table.completed_at[rid]


class Lookahead:
    """Sends each request to the replica where ``objective`` (its own TTFT or E2E, with no
    later arrivals) comes out lowest; ties broken at random."""

    def __init__(self, objective: str) -> None:
        self.column = OBJECTIVES.index(objective)
        self.rng = np.random.default_rng(0)

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def choose(self, sim: ClusterSimulator, rid: int) -> int:
        scores = np.array([request_outcome(sim, r, rid)[self.column] for r in range(sim.num_replicas)])
        return int(self.rng.choice(np.flatnonzero(scores == scores.min())))


def predicted_outputs(table, max_tokens: int, lengths: str, rng: np.random.Generator) -> np.ndarray:
    """Each request's output length as the twin believes it (see the module docstring),
    kept within ``max_tokens`` with its prompt."""
    truth = np.asarray(table.orig_decode, dtype=np.int64)
    prompts = np.asarray(table.orig_prefill, dtype=np.int64)
    if lengths == "oracle":
        guess = truth.astype(float)
    elif lengths == "prior":
        guess = np.full(truth.size, float(EXPECTED_OUTPUT_TOKENS))
    else:
        sigma = float(lengths.split(":", 1)[1])
        guess = truth * np.exp(sigma * rng.standard_normal(truth.size) - sigma**2 / 2)
    return np.clip(np.rint(guess), 1, max_tokens - prompts).astype(np.int64)


class Twin:
    """The lookahead on a shadow simulation of the episode's cluster that sees the arrivals
    and the twin's own decisions, with predicted output lengths, and no replica state."""

    def __init__(self, env: VidurRoutingEnv, objective: str, lengths: str) -> None:
        self.env, self.lengths = env, lengths
        self.lookahead = Lookahead(objective)

    def reset(self, seed: int) -> None:
        """Build this episode's shadow (call after ``env.reset``)."""
        table = self.env.simulator.table
        rng = np.random.default_rng([seed, 1])
        outputs = predicted_outputs(table, self.env.workload.max_tokens, self.lengths, rng)
        believed = Requests(np.asarray(table.arrived_at), np.asarray(table.orig_prefill), outputs,
                            block_hashes=list(table.block_hashes))
        self.shadow = self.env.episode.simulator(believed)
        self.lookahead.reset(seed)

    def act(self, _obs: np.ndarray) -> int:
        rid = self.shadow.advance_to_next_arrival()
        replica = self.lookahead.choose(self.shadow, rid)
        self.shadow.dispatch(replica)
        return replica


def policy(env: VidurRoutingEnv, name: str, objective: str):
    """(act, on_reset) of ``lookahead`` or ``twin:LENGTHS`` on ``env``."""
    if name == "lookahead":
        router = Lookahead(objective)
        return (lambda _obs: router.choose(env.simulator, env.current_request)), router.reset
    twin = Twin(env, objective, name.split(":", 1)[1])
    return twin.act, twin.reset


def run_scenario(name: str, episodes: int, objectives: list[str], routers: list[str]) -> None:
    kwargs = {"scenario": name}
    base, best = heuristic_baseline(kwargs, name, episodes)
    print(f"\n{name}, {episodes} held-out episodes: best heuristic per figure: "
          + ", ".join(f"{TITLES[f]} {best[f]}" for f in FIGURES))
    print(f"{'router':<16} {'objective':<9} " + "  ".join(f"{TITLES[f]:>16}" for f in FIGURES) + "  bar   s/episode")
    for objective in objectives:
        for router in routers:
            env = VidurRoutingEnv(**kwargs)
            act, on_reset = policy(env, router, objective)
            start = time.perf_counter()
            figures = episode_figures(run_episodes(env, act, episodes, EVALUATION_SEED, on_reset=on_reset))
            seconds = (time.perf_counter() - start) / episodes
            print(f"{router:<16} {objective:<9} {bar_cells(figures, base, best)} {seconds:9.1f}", flush=True)


def router_name(value: str) -> str:
    """``lookahead`` or ``twin:prior`` / ``twin:oracle`` / ``twin:noisy:SIGMA`` (argparse type)."""
    if value in ("lookahead", "twin:prior", "twin:oracle"):
        return value
    if value.startswith("twin:noisy:"):
        try:
            if float(value.rsplit(":", 1)[1]) >= 0:
                return value
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(
        f"--routers: {value!r} is not lookahead, twin:prior, twin:oracle or twin:noisy:SIGMA (SIGMA >= 0)")


def positive_int(value: str) -> int:
    """argparse type: an integer >= 1."""
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise argparse.ArgumentTypeError(f"--episodes: must be a positive integer, got {value!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", nargs="+", choices=sorted(SCENARIOS), default=["stale1000", "hetero"])
    parser.add_argument("--episodes", type=positive_int, default=40)
    parser.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=["ttft"])
    parser.add_argument("--routers", nargs="+", type=router_name,
                        default=["lookahead", "twin:prior", "twin:noisy:0.5"])
    args = parser.parse_args()
    for name in args.scenarios:
        run_scenario(name, args.episodes, args.objectives, args.routers)


if __name__ == "__main__":
    main()
