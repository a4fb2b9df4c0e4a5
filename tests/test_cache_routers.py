"""Cache-aware routers on hand-made cluster states (precise mode through a fake KV cache with
the prefix-caching read API), their approximate index, and runs on a session workload."""
from __future__ import annotations

import hashlib
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from vidur_env.cache_routers import CACHE_ROUTERS, rendezvous_weight
from vidur_env.cache_view import CacheView, PrefixIndex
from vidur_env.config import ClusterConfig, ConfigError, ReplicaConfig
from vidur_env.env import VidurRoutingEnv
from vidur_env.routers import RouterPolicy, make_router
from vidur_env.sessions import SessionConfig
from vidur_env.scenarios import named_scenario
from vidur_env.simulation import Scenario, run_simulation
from vidur_env.workload import WorkloadConfig


class FakeKV:
    """The contract's read API over a set of cached keys (what the cache branch provides)."""

    def __init__(self, keys=()):
        self.keys = set(keys)

    def match_blocks(self, hashes):
        count = 0
        while count < len(hashes) and hashes[count] in self.keys:
            count += 1
        return count

    @property
    def cached_blocks(self):
        return len(self.keys)


def replica(waiting=0, running=0, cached=(), prompt_tokens=0, blocks=0, num_blocks=1000):
    return SimpleNamespace(num_waiting=waiting, num_allocated_requests=running, kv=FakeKV(cached),
                           num_blocks=num_blocks, waiting_prompt_tokens=prompt_tokens, allocated_blocks=blocks,
                           kv_utilization=blocks / num_blocks)


def cluster(replicas, keys, prefill=None):
    """A duck-typed simulator holding one request (id 0) with prompt block ``keys``."""
    table = SimpleNamespace(block_hashes=[tuple(keys) if keys is not None else None],
                            orig_prefill=[prefill if prefill is not None else 16 * len(keys or ())])
    return SimpleNamespace(replicas=replicas, table=table, num_replicas=len(replicas), next_request=0)


def route(name, sim, seed=0):
    router = make_router(name)
    router.reset(sim.num_replicas, np.random.default_rng(seed))
    return router.choose(sim, 0)


KEYS = tuple(range(10))


def test_prefix_index_matches_the_longest_prefix_and_evicts_tails_first():
    index = PrefixIndex([12])
    index.record(0, KEYS)
    assert index.match(0, KEYS) == 10 and index.match(0, (0, 1, 99)) == 2 and index.match(0, (55,)) == 0
    index.record(0, KEYS[:4])  # touched again: now more recent than the keys of the new request's tail
    index.record(0, (0, 1, 20, 21, 22, 23))  # 14 keys > 12: the oldest 2 go, i.e. the first request's tail
    assert index.size(0) == 12
    assert index.match(0, KEYS) == 8 and index.match(0, (0, 1, 20, 21, 22, 23)) == 6


def test_prefix_index_evicts_exactly_the_least_recent_keys_over_many_records():
    """Against a reference LRU (an OrderedDict moved to the end key by key): random prompts
    sharing heads, so most stamps go stale and eviction reads several slices of the log, which
    is also compacted on the way."""
    from collections import OrderedDict

    rng = np.random.default_rng(3)
    index, reference, capacity = PrefixIndex([40]), OrderedDict(), 40
    for _ in range(300):
        head = int(rng.integers(0, 4))
        keys = tuple(range(head * 1000, head * 1000 + int(rng.integers(1, 30))))
        index.record(0, keys)
        for key in reversed(keys):
            reference[key] = None
            reference.move_to_end(key)
        while len(reference) > capacity:
            reference.popitem(last=False)
        assert set(index.blocks[0]) == set(reference)
        assert index.match(0, keys) == len(keys)
    assert len(index.log_keys[0]) - index.front[0] <= 2 * capacity + 30  # the read part of the log is dropped


def test_prefix_index_keeps_a_key_recorded_twice_at_its_most_recent_place():
    """One stamp per recorded run: a key twice in one prompt must still leave the LRU order
    where a stamp per key would put it (its first place in the prompt, the most recent)."""
    from collections import OrderedDict

    index, reference = PrefixIndex([4]), OrderedDict()
    for keys in ((1, 2, 1, 3), (7, 8), (9,)):
        index.record(0, keys)
        for key in reversed(keys):
            reference[key] = None
            reference.move_to_end(key)
        while len(reference) > 4:
            reference.popitem(last=False)
        assert set(index.blocks[0]) == set(reference)


def test_sglang_takes_the_best_match_above_the_threshold():
    sim = cluster([replica(cached=KEYS[:2]), replica(cached=KEYS[:4], running=3), replica()], KEYS)
    assert route("sglang_cache_aware_precise", sim) == 1  # 4/10 >= 0.3


def test_sglang_below_the_threshold_takes_the_smallest_tree():
    sim = cluster([replica(cached=(0, 1, 50, 51)), replica(cached=(0, 1, 2)), replica(cached=(70,))], KEYS)
    assert route("sglang_cache_aware_precise", sim) == 1  # 3/10 is at the threshold: the best match
    sim = cluster([replica(cached=(0, 1, 50, 51)), replica(cached=(0, 1)), replica(cached=(70, 71, 72))], KEYS)
    assert route("sglang_cache_aware_precise", sim) == 1  # 2/10 < 0.3: smallest tree (2 blocks)


def test_sglang_switches_to_least_load_only_when_both_imbalance_thresholds_are_exceeded():
    heavy = replica(cached=KEYS, waiting=100)
    assert route("sglang_cache_aware_precise", cluster([heavy, replica(running=30)], KEYS)) == 1  # 100-30>64, 100>45
    heavy = replica(cached=KEYS, waiting=100)
    assert route("sglang_cache_aware_precise", cluster([heavy, replica(running=70)], KEYS)) == 0  # 100 < 1.5*70


def test_dynamo_cost_is_weighted_prefill_blocks_after_overlap_plus_decode_blocks():
    # request: 10 prompt blocks. replica 0: 8 cached, 64 queued prompt tokens (4 blocks), 30 active blocks
    # -> (4 + 10 - 8) + 30 + 10 = 46; replica 1: nothing cached, idle -> 10 + 10 = 20
    sim = cluster([replica(cached=KEYS[:8], prompt_tokens=64, blocks=30), replica()], KEYS)
    assert route("dynamo_kv", sim) == 1
    sim = cluster([replica(cached=KEYS[:8], prompt_tokens=64, blocks=5), replica()], KEYS)  # 6 + 5 + 10 = 21 > 20
    assert route("dynamo_kv", sim) == 1
    sim = cluster([replica(cached=KEYS[:8], prompt_tokens=0, blocks=5), replica()], KEYS)  # 2 + 5 + 10 = 17 < 20
    assert route("dynamo_kv", sim) == 0


def test_dynamo_with_a_temperature_samples_by_softmax_of_the_cost():
    router = CACHE_ROUTERS["dynamo_kv"]()
    router.temperature = 0.5
    router.reset(2, np.random.default_rng(0))
    sim = cluster([replica(cached=KEYS[:8]), replica()], KEYS)  # costs 12 and 20
    picks = [router.choose(sim, 0) for _ in range(2000)]
    expected = 1 / (1 + np.exp((20 - 12) / (0.5 * 20)))  # P(replica 1)
    assert abs(np.mean(picks) - expected) < 0.04


def test_llmd_weighs_queue_2_prefix_3_and_kv_utilisation_2():
    # replica 0: full match, loaded (queue score 0), kv 50% -> 0 + 3 + 1 = 4
    # replica 1: no match, idle (queue score 1), kv 0% -> 2 + 0 + 2 = 4 (tie: lowest index)
    # replica 2: half match, half load (queue 0.5), kv 0 -> 1 + 1.5 + 2 = 4.5
    sim = cluster([replica(cached=KEYS, waiting=10, blocks=500), replica(), replica(cached=KEYS[:5], waiting=5)], KEYS)
    assert route("llmd_scorer", sim) == 2


def test_consistent_hash_gives_a_prefix_one_stable_replica_and_spreads_prefixes():
    replicas = [replica() for _ in range(4)]
    assert route("consistent_hash", cluster(replicas, (7, 8, 9))) == route("consistent_hash", cluster(replicas, (7, 1)))
    spread = {route("consistent_hash", cluster(replicas, (k,))) for k in range(40)}
    assert spread == {0, 1, 2, 3}
    assert rendezvous_weight((7,), 2) == rendezvous_weight((7,), 2)  # no salted hash()


def test_aibrix_falls_back_to_least_request_beyond_an_imbalance_of_8():
    assert route("aibrix_prefix_precise", cluster([replica(cached=KEYS, running=9), replica()], KEYS)) == 1
    assert route("aibrix_prefix_precise", cluster([replica(cached=KEYS, running=8), replica()], KEYS)) == 0
    assert route("aibrix_prefix_precise", cluster([replica(running=3), replica(running=2)], KEYS)) == 1  # no match


def test_vllm_prefix_trades_match_ratio_against_relative_load():
    # replica 0: 1.0 - 0.5 * 10/10 = 0.5; replica 1: 0.8 - 0.5 * 2/10 = 0.7
    assert route("vllm_prefix_precise", cluster([replica(cached=KEYS, running=10), replica(cached=KEYS[:8], running=2)],
                                                KEYS)) == 1
    # replica 1 with 0.2 matched: 0.2 - 0.1 = 0.1 < 0.5
    assert route("vllm_prefix_precise", cluster([replica(cached=KEYS, running=10), replica(cached=KEYS[:2], running=2)],
                                                KEYS)) == 0


def test_requests_without_keys_fall_back_to_load():
    sim = cluster([replica(running=5, blocks=50), replica(running=1, blocks=10)], None, prefill=100)
    for name in ("dynamo_kv", "llmd_scorer", "aibrix_prefix", "vllm_prefix"):
        assert route(name, sim) == 1, name
    sim.replicas[1].kv.keys = {70}  # SGLang: no match -> the smallest tree, whatever the load
    assert route("sglang_cache_aware_precise", sim) == 0


def test_approximate_mode_follows_its_own_routing_history():
    router = make_router("sglang_cache_aware")
    router.reset(3, np.random.default_rng(0))
    sim = cluster([replica(), replica(), replica()], (100, 101, 102))
    assert router.choose(sim, 0) == 0  # nothing indexed: the smallest tree, ties to the lowest index
    sim.table.block_hashes, sim.table.orig_prefill = [(100, 101, 102, 103)], [64]
    assert router.choose(sim, 0) == 0  # 3/4 matched in its own index (the replicas' caches are empty)
    sim.table.block_hashes, sim.table.orig_prefill = [(5, 6, 7)], [48]
    assert router.choose(sim, 0) == 1  # no match: the smallest tree (replica 0 holds 4 blocks)


def test_precise_view_on_a_cache_without_the_read_api_sees_nothing_cached():
    view = CacheView("precise", [SimpleNamespace(kv=object(), num_blocks=10)])
    assert view.match(0, KEYS) == 0 and view.cached(0) == 0
    with pytest.raises(ValueError, match="approximate, precise"):
        CacheView("exact", [])


def session_scenario(**kwargs) -> Scenario:
    return Scenario(cluster=ClusterConfig(num_replicas=3, replica=ReplicaConfig(model="llama-3.1-8b")),
                    workload=WorkloadConfig(num_requests=150, sessions=SessionConfig(think_time_s=2.0),
                                            max_tokens=16384, **kwargs), load=0.9)


@pytest.mark.parametrize("name", sorted(CACHE_ROUTERS))
def test_every_cache_router_serves_a_session_workload_reproducibly(name):
    one = run_simulation(session_scenario(), name, seed=1)
    two = run_simulation(session_scenario(), name, seed=1)
    assert one.metrics["num_requests"] == 150
    assert one.simulator.table.completed_at == two.simulator.table.completed_at
    assert one.simulator.table.replica == two.simulator.table.replica


@pytest.mark.parametrize("name", ["sglang_cache_aware", "llmd_scorer_approximate", "vllm_prefix", "aibrix_prefix"])
def test_policy_on_the_envs_cache_columns_matches_the_router_on_the_simulator(name):
    env = VidurRoutingEnv(scenario="prefix", num_replicas=3, num_requests=120, cache_view="approximate")
    router = make_router(name)
    router.reset(3, np.random.default_rng(0))
    policy = RouterPolicy(name)
    obs, _ = env.reset(seed=0)
    done, hits = False, 0
    while not done:
        action = router.choose(env.simulator, env.current_request)
        assert int(policy.predict(obs)[0]) == action
        hits += obs[:, -2].max() > 0
        obs, _, terminated, truncated, _ = env.step(action)
        done = terminated or truncated
    assert hits > 30  # the prefix columns were live, not all zero


def test_routers_that_need_more_than_observations_say_what_they_need():
    env = VidurRoutingEnv(scenario="prefix", num_replicas=2, num_requests=5, cache_view="precise")
    obs, _ = env.reset(seed=0)
    with pytest.raises(ValueError, match="dynamo_kv' needs block counts"):
        RouterPolicy("dynamo_kv").predict(obs)
    with pytest.raises(ValueError, match="consistent_hash' needs the request's first block key"):
        RouterPolicy("consistent_hash").predict(obs)
    plain, _ = VidurRoutingEnv(num_replicas=2, num_requests=5).reset(seed=0)
    with pytest.raises(ValueError, match="cache_view='approximate' or 'precise'"):
        RouterPolicy("sglang_cache_aware").predict(plain)


def test_env_cache_columns_show_the_prefix_match_in_the_approximate_view():
    env = VidurRoutingEnv(scenario="prefix", num_replicas=2, num_requests=60, cache_view="approximate")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2, 18) and not obs[:, -2:].any()
    table = env.simulator.table
    seen: dict[int, list] = {0: [], 1: []}
    done = False
    while not done:
        rid = env.current_request
        keys = table.block_hashes[rid][: table.orig_prefill[rid] // 16]
        for r in (0, 1):  # hand-computed: the longest prefix of keys among the prompts routed to r
            best = max([next((i for i, (a, b) in enumerate(zip(keys, k)) if a != b), min(len(keys), len(k)))
                        for k in seen[r]] or [0])
            assert obs[r, -2] == pytest.approx(16 * best / table.orig_prefill[rid], abs=1e-6)
        action = rid % 2
        seen[action].append(keys)
        obs, _, terminated, truncated, _ = env.step(action)
        done = terminated or truncated


class ReadableKV:
    """A replica's KV cache plus the contract's read API over a given set of cached keys."""

    def __init__(self, kv, keys):
        self._kv, self._keys = kv, FakeKV(keys)

    def __getattr__(self, name):
        return getattr(self._kv, name)

    def match_blocks(self, hashes):
        return self._keys.match_blocks(hashes)

    @property
    def cached_blocks(self):
        return self._keys.cached_blocks


def test_env_cache_columns_read_the_replicas_caches_in_the_precise_view():
    env = VidurRoutingEnv(scenario="prefix", num_replicas=2, num_requests=5, cache_view="precise")
    env.reset(seed=0)
    table, rid = env.simulator.table, env.current_request
    keys = table.block_hashes[rid][: table.orig_prefill[rid] // 16]
    first, second = env.simulator.replicas
    first.kv, second.kv = ReadableKV(first.kv, keys[:10]), ReadableKV(second.kv, keys[:3] + (999,))
    obs = env.unwrapped._obs.build(table.orig_prefill[rid], 0, prompt_keys=keys)
    assert obs[0, -2] == pytest.approx(160 / table.orig_prefill[rid]) and obs[1, -2] == pytest.approx(48 / table.orig_prefill[rid])
    assert obs[0, -1] == pytest.approx(10 / first.num_blocks) and obs[1, -1] == pytest.approx(4 / second.num_blocks)


def test_env_cache_view_is_validated_and_optional():
    assert VidurRoutingEnv(num_replicas=2, num_requests=5).observation_space.shape == (2, 16)
    assert VidurRoutingEnv(num_replicas=2, num_requests=5, cache_view="precise", output_predictor="oracle").observation_space.shape == (2, 19)
    with pytest.raises(ConfigError, match="cache_view: must be None, 'approximate' or 'precise'"):
        VidurRoutingEnv(num_replicas=2, num_requests=5, cache_view="exact")


def decisions_digest(name: str, num_blocks: int | None) -> str:
    """sha256 of a small ``prefix`` run routed by ``name``: every request's replica, cached
    tokens, restarts and completion time (so the caches' content is pinned with the decisions)."""
    base = named_scenario("prefix")
    scenario = replace(base, workload=replace(base.workload, num_requests=400),
                       cluster=replace(base.cluster, replica=replace(base.cluster.replica, num_blocks=num_blocks)))
    table = run_simulation(scenario, name, seed=2).simulator.table
    columns = (table.replica, table.cached_tokens, table.restarts, table.completed_at)
    return hashlib.sha256(repr([list(column) for column in columns]).encode()).hexdigest()


PINNED_DECISIONS = {
    "aibrix_prefix": ["516be500f7e0f79798b97bf260264873d0fb6ab6f93422e6c0e197258bbe90d1",
                     "be556d95f6d59b626e693e00571573bc317eab005b2415bc079aeb46369d7c5b"],
    "aibrix_prefix_precise": ["802277a416700a542f121858d7ec83d234d663542b4533ddc80c93e8ca011854",
                             "1ee25d9640540443577e4ebc2777511af51656c463ba2c21716668f3d981387c"],
    "consistent_hash": ["4379c19c58579e0e4ae6ff00c7a80fca723042e7cc0fdd20797cb7a6fd80f922",
                       "f82a273656d28df4915fab3c723ff8f9741d4b66e41f7d11c6b2c9c4e02a7b4a"],
    "dynamo_kv": ["8b922dd7c4869b5208763c973b252f71cce0de9235534b2db7b4e77ae6788e57",
                 "e4138d1d3bfe302270dd29623e03d1b97e83d73299423fbe159368c03625b4eb"],
    "dynamo_kv_approximate": ["eebc45402fc9846c30966ff762541fafd084a3b7c482e67abb3546692465fcf9",
                             "80095f652b762d0a7360e750b07188236fc25449dda8263e7070530e9f32c090"],
    "llmd_scorer": ["f0a78e01b95e6b29c8a4d7a3719a8d4d0c516f7a2a353c34f65204eed836277c",
                   "5ec17aa4fe58670204cae51fe9eec07c361b0bb620729bf9b3a73f188022f130"],
    "llmd_scorer_approximate": ["c8b02b141d9cd2c7993f241021a7d061e10059abc2a569c590ca35a10060037e",
                               "9b470ea2fec4aa395cd19fd2754f20c2ee8325175e070b7d498f32fb392f59b5"],
    "sglang_cache_aware": ["00bf0feedb672cc2493877fb6bfbaa935f0810406d096f3e2cdf2f16b095dd4c",
                          "80f6ad1878834fc33a82b7a2cdb333f6edd281f4bce8504a84ce804308fdac23"],
    "sglang_cache_aware_precise": ["07d8c9748e1fec8c08fdfa57608341d86b444161f70d34d173aac499bf2b961a",
                                  "a174afe33351f7a812e3c4095cadc74a42d2b88bbd19b4a6ffdce1819634f85a"],
    "vllm_prefix": ["2038855d8e324efe15d76def5215084d99e300efd97fa2c50ab5cccb4bd0970a",
                   "dd3465b97d19aae507f76f9fe4443bbd4d2a488580ecbac260a4297267f50acf"],
    "vllm_prefix_precise": ["2038855d8e324efe15d76def5215084d99e300efd97fa2c50ab5cccb4bd0970a",
                           "6797ee911d3d8fe4a8c502da1d9f7d3917e2589d09ae3a74f9cd8889d5d1f4e4"],
    "round_robin": ["36079d71175505b6661d6f97a2cdd47dd175a4b188906c87178489fa09b14079",
                   "4069bb6109000d1649814b7c1d2eb0818009bbf82ddc6ef786557073fc8e71d5"],
}
""":func:`decisions_digest` per cache router (and round robin, pinning the replicas' caches
alone), with the scenario's KV capacity (None) and with 600 blocks per replica (evictions in
the caches and the approximate index, and preemptions), computed at commit d4417a3, before the
cache path was optimised: a faster cache path must route and cache alike. Re-pinned once, when a
one-token last prefill chunk became a prefill in the time lookup (Vidur main's rule; prefix hits
leave such chunks often), with nothing else changed."""


@pytest.mark.parametrize("name", sorted(PINNED_DECISIONS))
def test_cache_routers_decide_as_pinned(name):
    assert [decisions_digest(name, blocks) for blocks in (None, 600)] == PINNED_DECISIONS[name]
