"""Heuristic routers: each decides as its definition says, on the simulator and on observations."""
from __future__ import annotations

from math import inf
from types import SimpleNamespace

import numpy as np
import pytest

from vidur_env.cli import main
from vidur_env.env import VidurRoutingEnv
from vidur_env.observation import ObservationBuilder, PrefillPlan, ReplicaCosts
from vidur_env.routers import ROUTERS, RouterPolicy, make_router


class LinearTime:
    """Prefill costs ``p`` s per token, a decode ``d`` s per request: costs are exactly (p, d)."""

    def __init__(self, p: float, d: float) -> None:
        self.p, self.d = p, d

    def iteration_time(self, num_decodes, decode_kv_sum, chunks, kvs):
        return sum(chunks) * self.p + num_decodes * self.d


FAST, SLOW = LinearTime(1e-4, 1e-3), LinearTime(3e-4, 3e-3)

# name: (waiting, running, waiting prompt tokens, KV blocks of 100, time model)
STATE = {
    "A": (0, 6, 0, 40, FAST),
    "B": (1, 1, 3000, 1, FAST),
    "C": (1, 0, 5000, 5, FAST),
    "D": (0, 3, 0, 30, FAST),
    "E": (0, 2, 0, 20, SLOW),
}
# lor: waiting [0,1,1,0,0] -> A (lowest index of the ties); jsq: waiting+running [6,2,1,3,2] -> C;
# vllm_dp: 4*waiting+running [6,5,4,3,2] -> E; least_kv -> B;
# least_work_left (s): A 6*.21=1.26, B .3+2*.21=.72, C .5+.21=.71, D 3*.21=.63, E 2*.63=1.26 -> D.
EXPECTED = {"lor": 0, "jsq": 2, "vllm_dp": 4, "least_kv": 1, "least_work_left": 3}


def replica(i, waiting, running, tokens, blocks, model):
    return SimpleNamespace(
        replica_id=i, num_waiting=waiting, num_allocated_requests=running, waiting_prompt_tokens=tokens,
        allocated_blocks=blocks, num_blocks=100, kv_utilization=blocks / 100, num_in_batch=0, batch_end=inf,
        is_busy=False, time_model=model,
        kv=SimpleNamespace(num_allocated_requests=running, allocated_blocks=blocks, num_blocks=100),
    )


def hand_built(state=STATE, prompt=100, output=10):
    """A simulator stand-in whose request 0 has ``prompt`` and ``output`` tokens."""
    replicas = [replica(i, *values) for i, values in enumerate(state.values())]
    table = SimpleNamespace(orig_prefill=[prompt], orig_decode=[output])
    return SimpleNamespace(replicas=replicas, num_replicas=len(replicas), table=table)


def observe(sim, oracle=False):
    builder = ObservationBuilder([ReplicaCosts.from_time_model(r.time_model) for r in sim.replicas],
                                 [r.num_blocks for r in sim.replicas], max_tokens=4096, output_estimate=oracle,
                                 prefill_plans=[PrefillPlan(r.time_model, None, 0) for r in sim.replicas])
    builder.snapshot(sim.replicas, 0.0)
    return builder.build(sim.table.orig_prefill[0], sim.table.orig_decode[0])


def chosen(name, sim, seed=0):
    router = make_router(name)
    router.reset(sim.num_replicas, np.random.default_rng(seed))
    return router.choose(sim, 0)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_score_router_decides_by_its_definition(name):
    sim = hand_built()
    assert chosen(name, sim) == EXPECTED[name]
    action, state = RouterPolicy(name).predict(observe(sim))
    assert action.shape == () and int(action) == EXPECTED[name] and state is None


def test_jsq_counts_running_requests_and_lor_does_not():
    sim = hand_built({"x": (1, 0, 0, 0, FAST), "y": (0, 9, 0, 0, FAST)})
    assert chosen("lor", sim) == 1 and chosen("jsq", sim) == 0


def test_vllm_dp_weighs_a_queued_request_as_four_running():
    four_running = hand_built({"x": (1, 0, 0, 0, FAST), "y": (0, 4, 0, 0, FAST)})
    five_running = hand_built({"x": (1, 0, 0, 0, FAST), "y": (0, 5, 0, 0, FAST)})
    assert chosen("vllm_dp", four_running) == 0  # tie: 4 = 4, lowest index
    assert chosen("vllm_dp", five_running) == 0
    three_running = hand_built({"x": (1, 0, 0, 0, FAST), "y": (0, 3, 0, 0, FAST)})
    assert chosen("vllm_dp", three_running) == 1


def test_least_work_left_weighs_a_slow_replica_more():
    same_load = hand_built({"slow": (0, 2, 0, 0, SLOW), "fast": (0, 2, 0, 0, FAST)})
    assert chosen("least_work_left", same_load) == 1
    assert chosen("jsq", same_load) == 0


LWL_VARIANTS = ("speed_aware_lwl", "staleness_aware_lwl")


@pytest.mark.parametrize("name", LWL_VARIANTS)
def test_speed_aware_lwl_counts_the_requests_own_cost_on_each_replica(name):
    # idle slow replica vs fast one running one request (0.21 s queued): least_work_left takes the
    # idle one; a 1000-token prompt costs .3 + .63 s there but .1 + .21 s on the fast one
    state = {"slow": (0, 0, 0, 0, SLOW), "fast": (0, 1, 0, 0, FAST)}
    sim = hand_built(state, prompt=1000)
    assert chosen("least_work_left", sim) == 0
    assert chosen(name, sim) == 1
    assert int(RouterPolicy(name, seed=0).predict(observe(sim))[0]) == 1


@pytest.mark.parametrize("name", LWL_VARIANTS)
def test_speed_aware_lwl_reads_the_true_output_only_as_an_oracle(name):
    # prompt 100, output 10: expected-output costs slow .03 + .63 vs fast .21 + .01 + .21 -> fast;
    # true-output costs slow .03 + .03 vs fast .21 + .01 + .01 -> slow
    sim = hand_built({"slow": (0, 0, 0, 0, SLOW), "fast": (0, 1, 0, 0, FAST)}, prompt=100, output=10)
    assert chosen(name, sim) == 1
    oracle = ROUTERS[name](oracle=True)
    oracle.reset(2, np.random.default_rng(0))
    assert oracle.choose(sim, 0) == 0
    assert int(RouterPolicy(name, seed=0).predict(observe(sim, oracle=True))[0]) == 0


@pytest.mark.parametrize("name", LWL_VARIANTS)
def test_speed_aware_lwl_breaks_ties_at_random_reproducibly_by_seed(name):
    idle = hand_built({k: (0, 0, 0, 0, FAST) for k in "abcd"})
    picks = [chosen(name, idle, seed) for seed in range(40)]
    assert set(picks) == {0, 1, 2, 3}
    assert picks == [chosen(name, idle, seed) for seed in range(40)]
    obs = observe(idle)
    assert {int(RouterPolicy(name, seed=s).predict(obs)[0]) for s in range(40)} == {0, 1, 2, 3}
    assert chosen(name, hand_built({"busy": (0, 1, 0, 0, FAST), "idle": (0, 0, 0, 0, FAST)}), 0) == 1


def test_staleness_aware_lwl_spreads_requests_between_snapshots_where_speed_aware_herds():
    """Four requests arrive before the next refresh of a snapshot showing replica a idle and b
    running one request (0.21 s); each request adds 0.22 s where it goes."""
    sim = hand_built({"a": (0, 0, 0, 0, FAST), "b": (0, 1, 0, 0, FAST)})
    builder = ObservationBuilder([ReplicaCosts.from_time_model(FAST)] * 2, [100, 100], max_tokens=4096,
                                 refresh_s=1.0, prefill_plans=[PrefillPlan(FAST, None, 0)] * 2)
    picks = {}
    for name in LWL_VARIANTS:
        policy, picks[name] = RouterPolicy(name, seed=1), []
        builder.snapshot(sim.replicas, 0.0)
        for k in range(4):
            obs = builder.build(100, 10, now=0.1 * k)
            action = int(policy.predict(obs[None], episode_start=np.array([k == 0]))[0][0])
            builder.dispatched(action)
            picks[name].append(action)
    assert picks == {"speed_aware_lwl": [0, 0, 0, 0], "staleness_aware_lwl": [0, 1, 0, 1]}


def test_power_of_two_takes_the_less_loaded_of_two_sampled_replicas():
    sim = hand_built()
    loads = [w + r for w, r, *_ in STATE.values()]
    picks = []
    for seed in range(40):
        a, b = sorted(int(i) for i in np.random.default_rng(seed).choice(5, 2, replace=False))
        pick = chosen("power_of_two", sim, seed)
        assert pick in (a, b) and loads[pick] == min(loads[a], loads[b])
        picks.append(pick)
    assert 0 not in picks  # the most loaded replica loses every comparison
    assert chosen("power_of_two", hand_built({"only": (5, 5, 0, 0, FAST)})) == 0


def test_round_robin_cycles_and_restarts_with_each_episode():
    policy = RouterPolicy("round_robin")
    obs = np.stack([observe(hand_built())] * 2)  # two envs
    actions = [policy.predict(obs)[0].tolist() for _ in range(6)]
    assert actions == [[0, 0], [1, 1], [2, 2], [3, 3], [4, 4], [0, 0]]
    restarted, _ = policy.predict(obs, episode_start=np.array([True, False]))
    assert restarted.tolist() == [0, 1]


def test_random_policy_is_uniform_and_reproducible_by_seed():
    obs = observe(hand_built())[None]
    draws = [int(RouterPolicy("random", seed=3).predict(obs)[0][0]) for _ in range(2)]
    assert draws[0] == draws[1]
    policy = RouterPolicy("random", seed=0)
    counts = np.bincount([int(policy.predict(obs)[0][0]) for _ in range(500)], minlength=5)
    assert counts.min() > 60


def test_registry_names_every_router_and_rejects_unknown_names():
    assert set(ROUTERS) == {"round_robin", "random", "lor", "jsq", "power_of_two", "least_kv", "least_work_left",
                            "vllm_dp", "speed_aware_lwl", "staleness_aware_lwl", "sglang_cache_aware",
                            "sglang_cache_aware_precise", "dynamo_kv", "dynamo_kv_approximate", "llmd_scorer",
                            "llmd_scorer_approximate", "vllm_prefix", "vllm_prefix_precise", "aibrix_prefix",
                            "aibrix_prefix_precise", "consistent_hash"}
    with pytest.raises(ValueError, match="least_kv"):
        make_router("shortest")
    with pytest.raises(ValueError, match="unknown router"):
        RouterPolicy("shortest")


def assert_policy_follows_router(env: VidurRoutingEnv, router, policy: RouterPolicy) -> None:
    """Run an episode with ``router``'s decisions on the simulator; ``policy`` on the env's
    observations must pick the same replica at every step."""
    obs, _ = env.reset(seed=0)
    terminated = False
    while not terminated:
        action = router.choose(env.simulator, env.current_request)
        assert int(policy.predict(obs)[0]) == action
        obs, _, terminated, _, _ = env.step(action)


@pytest.mark.parametrize("name", LWL_VARIANTS)
def test_lwl_variants_on_fresh_observations_match_the_router_on_the_simulator(name):
    """Same decisions, random tie-breaks included (the policy seeds its router as below)."""
    env = VidurRoutingEnv(cluster={"replicas": [{"device": "a100"}, {"device": "a100"}, {"device": "h100"},
                                                {"device": "a100", "tensor_parallel": 2}]}, num_requests=200, load=1.1)
    router = make_router(name)
    router.reset(4, np.random.default_rng(np.random.default_rng(7).integers(2**63)))
    policy = RouterPolicy(name, seed=7)
    assert_policy_follows_router(env, router, policy)


@pytest.mark.parametrize("name", ["lor", "jsq", "vllm_dp", "least_kv", "least_work_left"])
def test_policy_on_fresh_observations_matches_the_router_on_the_simulator(name):
    env = VidurRoutingEnv(num_replicas=3, num_requests=150, load=1.2)
    router = make_router(name)
    router.reset(3, np.random.default_rng(0))
    policy = RouterPolicy(name)
    assert_policy_follows_router(env, router, policy)


@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_every_router_runs_from_the_simulate_command(name, capsys):
    assert main(["simulate", "--router", name, "--replicas", "2", "--num-requests", "20"]) == 0
    assert '"num_requests": 20' in capsys.readouterr().out


def test_router_policies_work_with_sb3_evaluate_policy():
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    venv = make_vec_env(VidurRoutingEnv, n_envs=2, env_kwargs=dict(num_replicas=2, num_requests=16), seed=0)
    for name in ("jsq", "power_of_two", "round_robin"):
        mean, std = evaluate_policy(RouterPolicy(name, seed=0), venv, n_eval_episodes=2)
        assert mean < 0 and np.isfinite(std)


INDEXED_ROUTERS = ("lor", "jsq", "vllm_dp", "least_kv", "least_work_left", "speed_aware_lwl", "staleness_aware_lwl")


@pytest.mark.parametrize("mixed", [True, False])
@pytest.mark.parametrize("name", INDEXED_ROUTERS)
def test_indexed_router_picks_what_the_scan_picks(name, mixed):
    """At every decision of a random workload on 64 replicas (with ``mixed``, a fifth on faster
    devices; some idle, many tied), the incremental index picks the replica the full scan picks,
    generator draws included: both routers run on the same simulator with equally seeded
    generators."""
    from dataclasses import replace as with_fields

    from vidur_env.config import ClusterConfig, ReplicaConfig
    from vidur_env.simulation import Scenario, resolve_workload
    from vidur_env.cluster import ClusterSimulator, build_time_models
    from vidur_env.workload import generate_requests

    a100, h100 = ReplicaConfig(), ReplicaConfig(device="h100")
    cluster = ClusterConfig(replicas=tuple(h100 if mixed and i % 5 == 0 else a100 for i in range(64)))
    scenario = Scenario(cluster=cluster, load=0.9)
    scenario = with_fields(scenario, workload=with_fields(scenario.workload, num_requests=3000))
    models = build_time_models(cluster)
    requests = generate_requests(resolve_workload(scenario, models), np.random.default_rng(7))
    sim = ClusterSimulator(cluster, requests, max_tokens=scenario.workload.max_tokens, time_models=models)
    indexed, scan = make_router(name), make_router(name)
    scan.indexed = False
    indexed.reset(64, np.random.default_rng(1))
    scan.reset(64, np.random.default_rng(1))
    choices = set()
    while not sim.done_routing:
        rid = sim.advance_to_next_arrival()
        choice = indexed(sim, rid)
        assert choice == scan(sim, rid), f"request {rid}"
        choices.add(choice)
        sim.dispatch(choice)
    assert len(choices) > 32  # the workload spreads over the fleet: decisions were not trivial


def test_the_index_follows_changes_made_after_it_looked():
    """Replicas advanced after the router looked and before the dispatch (a caller moving time
    on in between) are rescored at the next look: the index still agrees with the scan."""
    from dataclasses import replace as with_fields

    from vidur_env.cluster import ClusterSimulator, build_time_models
    from vidur_env.config import ClusterConfig
    from vidur_env.simulation import Scenario, resolve_workload
    from vidur_env.workload import generate_requests

    cluster = ClusterConfig(num_replicas=16)
    scenario = Scenario(cluster=cluster, load=1.2)
    scenario = with_fields(scenario, workload=with_fields(scenario.workload, num_requests=1500))
    models = build_time_models(cluster)
    workload = resolve_workload(scenario, models)
    requests = generate_requests(workload, np.random.default_rng(3))
    sim = ClusterSimulator(cluster, requests, max_tokens=workload.max_tokens, time_models=models)
    indexed, scan = make_router("jsq"), make_router("jsq")
    scan.indexed = False
    indexed.reset(16, np.random.default_rng(0))
    scan.reset(16, np.random.default_rng(0))
    arrivals = sim.table.arrived_at
    for _ in range(1500):
        rid = sim.advance_to_next_arrival()
        choice = indexed(sim, rid)
        assert choice == scan(sim, rid), f"request {rid}"
        if rid + 1 < len(arrivals):
            sim.advance_to((arrivals[rid] + arrivals[rid + 1]) / 2)  # replicas move after the look
        sim.dispatch(choice)
