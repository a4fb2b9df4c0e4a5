"""Prefix caching (issue 11): vLLM's automatic prefix caching, per replica and opt-in.

Hand-checkable cases on the cache alone and on small simulations, invariants over random
workloads with caching on, and the caching-off path unchanged bit for bit.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from test_simulator import (
    CACHING_SCHEDULERS, AffineTime, random_requests, requests, shared_prefix_hashes, simulate, with_hashes,
)

from vidur_env.cli import main
from vidur_env.cluster import ClusterSimulator
from vidur_env.config import ClusterConfig, ConfigError, ReplicaConfig
from vidur_env.kv_cache import BLOCK_SIZE, KVCache, PrefixKVCache, reachable_hit_tokens
from vidur_env.metrics import CACHED_TOKENS_COLUMN, RequestMetrics, aggregate_metrics
from vidur_env.request_table import RequestTable
from vidur_env.routers import make_router
from vidur_env.schedulers import SarathiScheduler, SchedulerLimits
from vidur_env.time_model import builtin_time_model


def table(prompts, hashes, output=10):
    """A request table of the given prompts and block hashes, all arriving at 0."""
    n = len(prompts)
    return RequestTable(np.zeros(n), np.asarray(prompts), np.full(n, output), block_hashes=hashes)


def run_request(kv, t, rid, prompt_done=True):
    """Admit ``rid``, compute its prompt (registering it), and free it."""
    kv.allocate(rid)
    if prompt_done:
        t.processed[rid] = t.prefill[rid] + 1
        t.prefill_done[rid] = True
        kv.prefill_done(rid)
    kv.free(rid)


# ------------------------------------------------------------------ the cache alone
def test_unreferenced_blocks_are_evicted_least_recently_released_and_a_request_tail_first():
    t = table([49, 49, 8 * 16], [(1, 2, 3), (11, 12, 13), None])
    kv = PrefixKVCache(t, num_blocks=10, watermark_fraction=0.0)
    run_request(kv, t, 0)
    run_request(kv, t, 1)
    # each released its 3 full prompt blocks tail first (its 4th, partial, block is not cached)
    assert list(kv.evictable) == [3, 2, 1, 13, 12, 11]
    assert kv.allocated_blocks == 0 and kv.cached_blocks == 6
    kv.allocate(2)  # 8 fresh blocks: 8 + 6 cached > 10, so the 4 least recently released go
    assert kv.evictions == 4
    assert list(kv.evictable) == [12, 11]
    assert kv.cached_blocks == 2 and kv.allocated_blocks == 8
    assert kv.match_blocks((11, 12, 13)) == 2 and kv.match_blocks((1, 2)) == 0


def test_a_hit_makes_its_blocks_the_most_recently_used():
    t = table([49, 49, 49, 8 * 16], [(1, 2, 3), (11, 12, 13), (1, 2, 99), None])
    kv = PrefixKVCache(t, num_blocks=10, watermark_fraction=0.0)
    run_request(kv, t, 0)
    run_request(kv, t, 1)
    kv.allocate(2)  # hits 1 and 2 (99 is not cached): they leave the eviction order while referenced
    assert t.processed[2] == 2 * BLOCK_SIZE and t.cached_tokens[2] == 32
    assert kv.ref_counts == {1: 1, 2: 1} and list(kv.evictable) == [3, 13, 12, 11]
    kv.free(2)  # released again, tail first, now the most recent
    assert list(kv.evictable) == [3, 13, 12, 11, 2, 1]
    kv.allocate(3)
    assert list(kv.evictable) == [2, 1]


def test_shared_blocks_are_counted_once_and_hits_on_referenced_blocks_take_no_new_block():
    t = table([50, 50, 50], [(1, 2, 3), (1, 2, 4), (1, 2, 3)])
    kv = PrefixKVCache(t, num_blocks=100, watermark_fraction=0.0)
    assert kv.admission_blocks(0) == 4
    kv.allocate(0)
    t.processed[0] = 51
    t.prefill_done[0] = True
    kv.prefill_done(0)  # registers 50 // 16 = 3 blocks
    assert kv.ref_counts == {1: 1, 2: 1, 3: 1}
    # request 1 hits blocks 1, 2 (referenced: no new block) and takes 2 fresh ones
    assert kv.admission_blocks(1) == 4 - 2
    # request 2 matches all 3 blocks, all referenced
    assert kv.match_blocks(t.block_hashes[2]) == 3 and kv.admission_blocks(2) == 1
    kv.allocate(1)
    assert kv.allocated_blocks == 4 + 2 and t.blocks[1] == 4
    assert kv.ref_counts == {1: 2, 2: 2, 3: 1}


def test_a_hit_on_an_unreferenced_block_takes_it_out_of_the_free_pool():
    t = table([50, 50], [(1, 2, 3), (1, 2, 4)])
    kv = PrefixKVCache(t, num_blocks=100, watermark_fraction=0.0)
    run_request(kv, t, 0)
    assert kv.allocated_blocks == 0 and kv.cached_blocks == 3
    assert kv.admission_blocks(1) == 4  # 2 cached but unreferenced (counted free) + 2 fresh
    kv.allocate(1)
    assert kv.allocated_blocks == 4 and list(kv.evictable) == [3]


def test_a_full_prompt_hit_still_computes_the_last_block():
    # the whole 64-token prompt is cached, but hits are capped at (64 - 1) // 16 = 3 blocks
    t = table([64, 64, 65], [(1, 2, 3, 4), (1, 2, 3, 4), (1, 2, 3, 4)])
    kv = PrefixKVCache(t, num_blocks=100, watermark_fraction=0.0)
    run_request(kv, t, 0)
    assert kv.cached_blocks == 4
    kv.allocate(1)
    assert t.processed[1] == 48
    kv.allocate(2)  # one more prompt token: all 4 blocks hit, the last token is computed
    assert t.processed[2] == 64


def test_reachable_hits_are_the_leading_blocks_an_earlier_request_computed():
    # 1 shares 0's first two blocks; 2 repeats 0's prompt (capped to leave its last token);
    # 3 has no prefix identity; 4 reaches into 0's output block (key 4); 5 follows 1's branch.
    prompts = [48, 64, 48, 48, 80, 64]
    hashes = [(1, 2, 3, 4), (1, 2, 9, 10), (1, 2, 3), None, (1, 2, 3, 4, 5), (1, 2, 9, 11)]
    assert reachable_hit_tokens(prompts, hashes) == [0, 32, 32, 0, 64, 48]


def test_preemption_releases_the_preempted_requests_references_only():
    t = table([50, 50], [(1, 2, 3), (1, 2, 4)])
    scheduler = SarathiScheduler(t, SchedulerLimits(num_blocks=100, max_batch_size=128, prefix_caching=True))
    scheduler.group_decodes = False
    kv = scheduler.kv
    for rid in (0, 1):
        scheduler.add_request(rid)
        scheduler.admit_head(0.0, 0)
        scheduler.advance_prefill(rid, t.prefill[rid] - t.processed[rid], 1.0)
    assert t.cached_tokens == [0, 32]
    assert kv.ref_counts == {1: 2, 2: 2, 3: 1, 4: 1}
    assert kv.allocated_blocks == 4 + 2  # 0: 3 cached + 1 partial block; 1: its own cached + partial
    scheduler.running.remove(1)
    scheduler._preempt(1)
    # the shared blocks stay referenced by request 0; request 1's own block becomes evictable
    assert kv.ref_counts == {1: 1, 2: 1, 3: 1}
    assert list(kv.evictable) == [4]
    assert kv.allocated_blocks == 4
    assert t.prefill[1] == 51 and list(scheduler.waiting) == [1]
    scheduler.admit_head(2.0, 0)  # the restarted request hits its own block again
    assert t.processed[1] == 48 and kv.ref_counts == {1: 2, 2: 2, 3: 1, 4: 1}


def test_output_blocks_are_cached_when_the_hashes_cover_them():
    # 40 + 30 tokens: the first 69 have KV at completion (the last token is never fed back): 4 blocks
    t = RequestTable(np.zeros(2), np.asarray([40, 100]), np.asarray([30, 5]),
                     block_hashes=[(1, 2, 3, 4), (1, 2, 3, 4, 5, 6)])
    kv = PrefixKVCache(t, num_blocks=100, watermark_fraction=0.0)
    kv.allocate(0)
    t.processed[0] = 41
    t.prefill_done[0] = True
    kv.prefill_done(0)
    assert kv.cached_blocks == 2
    t.processed[0] = 70
    t.blocks[0] = 5
    kv.free(0)
    assert list(kv.evictable) == [4, 3, 2, 1]
    assert kv.hit_tokens_at_admission(1) == 64


def test_without_prefix_caching_nothing_is_shared_and_the_router_view_is_empty():
    t = table([50, 50], [(1, 2, 3), (1, 2, 3)])
    kv = KVCache(t, num_blocks=100, watermark_fraction=0.0)
    run_request(kv, t, 0)
    kv.allocate(1)
    assert t.processed[1] == 0 and kv.allocated_blocks == 4
    assert not kv.prefix_caching and kv.match_blocks((1, 2, 3)) == 0 and kv.cached_blocks == 0


# ------------------------------------------------------------ small simulations
@pytest.mark.parametrize("scheduler", CACHING_SCHEDULERS)
@pytest.mark.parametrize("time_model", ["affine", "builtin"])
def test_a_shared_64_token_prefix_is_not_prefilled_again(scheduler, time_model):
    """Request 1 arrives after request 0 completes and shares its first 4 blocks: it prefills
    64 fewer tokens, attending to the 64 cached ones, and its TTFT shrinks by exactly the time
    model's difference."""
    tm = AffineTime() if time_model == "affine" else builtin_time_model("meta-llama/Llama-2-7b-hf", "a100", 1)
    reqs = requests([0.0, 10.0], [100, 100], [2, 2])
    hashes = [(1, 2, 3, 4, 10, 11), (1, 2, 3, 4, 20, 21)]
    off = simulate(reqs, scheduler=scheduler, time_model=tm, hashes=hashes)
    on = simulate(reqs, scheduler=scheduler, time_model=tm, hashes=hashes, prefix_caching=True)
    full = tm.iteration_time(0, 0, (100,), (0,))
    cached = tm.iteration_time(0, 0, (36,), (64,))
    ttft = [RequestMetrics.from_simulator(sim).prefill_e2e_time for sim in (off, on)]
    assert ttft[0] == pytest.approx([full, full], rel=1e-12)
    assert ttft[1] == pytest.approx([full, cached], rel=1e-12)
    assert ttft[0][1] - ttft[1][1] == pytest.approx(full - cached, rel=1e-9)
    assert on.table.cached_tokens == [0, 64] and off.table.cached_tokens == [0, 0]
    assert off.replicas[0].stats.prefill_tokens_sum - on.replicas[0].stats.prefill_tokens_sum == 64
    report = aggregate_metrics(on)
    assert report["prefix_cache_hit_rate"] == 64 / 200
    assert report["replicas"][0]["prefix_cache_hit_rate"] == 64 / 200
    assert report["replicas"][0]["prefix_cache_evictions"] == 0


def test_a_one_token_remainder_is_timed_as_a_decode():
    tm = AffineTime()
    reqs = requests([0.0, 10.0], [64, 65], [2, 2])
    sim = simulate(reqs, time_model=tm, hashes=[(1, 2, 3, 4), (1, 2, 3, 4)], prefix_caching=True)
    assert sim.table.cached_tokens == [0, 64]
    ttft = RequestMetrics.from_simulator(sim).prefill_e2e_time
    assert ttft[1] == pytest.approx(tm.iteration_time(1, 64, (), ()), rel=1e-12)


def test_vllm_counts_only_the_tokens_to_compute_against_its_batch_limit():
    """Three 1500-token prompts overflow vLLM's padded limit (3 x 1500 > 4096) unless 1024 of
    each are cached (3 x 476 fits): then they share one prefill batch."""
    prefix = tuple(range(64))
    reqs = requests([0.0, 10.0, 10.0, 10.0], [1100, 1500, 1500, 1500], [2, 2, 2, 2])
    hashes = [prefix] + [prefix + tuple(range(100 * r, 100 * r + 29)) for r in (1, 2, 3)]
    off = simulate(reqs, scheduler="vllm", hashes=hashes)
    on = simulate(reqs, scheduler="vllm", hashes=hashes, prefix_caching=True)
    assert off.table.scheduled_at[1] == off.table.scheduled_at[2] == 10.0 < off.table.scheduled_at[3]
    assert on.table.scheduled_at[1:] == [10.0] * 3
    assert on.table.cached_tokens == [0, 1024, 1024, 1024]


class InvariantChecker:
    """A router that checks every replica's cache at each decision, then routes randomly."""

    def __init__(self, num_replicas: int, seed: int) -> None:
        self.router = make_router("random")
        self.router.reset(num_replicas, np.random.default_rng(seed))
        self.checks = 0

    def __call__(self, sim: ClusterSimulator, rid: int) -> int:
        for replica in sim.replicas:
            check_cache(replica.kv, sim.table)
        self.checks += 1
        return self.router(sim, rid)


def check_cache(kv: PrefixKVCache, t: RequestTable) -> None:
    """Occupancy within capacity; reference counts positive and equal to the references the
    allocated requests hold; referenced and unreferenced blocks disjoint; allocated blocks the
    distinct referenced blocks plus the private ones (the blocks column is exact: no grouping)."""
    assert kv.cached_blocks + kv.allocated_blocks - len(kv.ref_counts) <= kv.num_blocks
    assert all(count > 0 for count in kv.ref_counts.values())
    held: dict[int, int] = {}
    private = 0
    for rid, refs in kv.refs.items():
        shared = [h for h in refs if h is not None]
        for h in shared:
            held[h] = held.get(h, 0) + 1
        private += t.blocks[rid] - len(shared)
    assert held == kv.ref_counts
    assert not set(kv.ref_counts) & set(kv.evictable)
    assert kv.allocated_blocks == len(kv.ref_counts) + private
    assert kv.num_allocated_requests == len(kv.refs)


@pytest.mark.parametrize("scheduler", CACHING_SCHEDULERS)
@pytest.mark.parametrize("seed", [0, 1])
def test_invariants_on_random_workloads_with_caching(scheduler, seed):
    reqs = random_requests(300, seed, qps=30.0)
    hashes = shared_prefix_hashes(reqs, seed)
    spec = ReplicaConfig(scheduler=scheduler, num_blocks=900, prefix_caching=True)
    sim = with_hashes(ClusterSimulator(ClusterConfig(num_replicas=2, replica=spec), reqs,
                                       time_models=[AffineTime()] * 2), hashes)
    for r in sim.replicas:
        r.fast_forward = r.group_decodes = False  # the blocks column exact at every decision
    checker = InvariantChecker(2, seed)
    sim.run(checker)
    t = sim.table
    assert checker.checks == 300
    assert all(c >= 0 for c in t.completed_at), "every request completes"
    for rid in range(len(t)):
        assert t.processed[rid] == t.total[rid] == t.prefill[rid] + t.decode[rid]
        assert t.blocks[rid] == 0
    for replica in sim.replicas:
        kv = replica.kv
        check_cache(kv, t)
        assert kv.ref_counts == {} and kv.refs == {} and kv.allocated_blocks == 0
        assert 0 < kv.cached_blocks <= kv.num_blocks
        assert replica.stats.peak_blocks <= replica.num_blocks
    assert sum(t.restarts) > 0 and sum(r.kv.evictions for r in sim.replicas) > 0
    # the hit rate: prompt tokens served from the cache over those served or computed
    for replica in sim.replicas:
        on_replica = [rid for rid in range(len(t)) if t.replica[rid] == replica.replica_id]
        assert replica.kv.hit_tokens == sum(t.cached_tokens[rid] for rid in on_replica) > 0
    # no admission hits more than an earlier request computed (a restart's hits add up)
    reachable = reachable_hit_tokens(list(t.orig_prefill), hashes)
    first_runs = [rid for rid in range(len(t)) if t.restarts[rid] == 0]
    assert all(t.cached_tokens[rid] <= reachable[rid] for rid in first_runs)
    assert any(t.cached_tokens[rid] == reachable[rid] > 0 for rid in first_runs)
    hits = sum(t.cached_tokens)
    computed = sum(r.stats.prefill_tokens_sum for r in sim.replicas)
    assert aggregate_metrics(sim)["prefix_cache_hit_rate"] == pytest.approx(hits / (hits + computed), rel=1e-12)


# ---------------------------------------------------------------- caching off
def outputs(sim):
    """Every per-request column and replica total a run produces, and its report."""
    t = sim.table
    columns = (t.scheduled_at, t.prefill_completed_at, t.completed_at, t.restarts, t.replica, t.processed,
               t.prefill, t.decode)
    return columns, [vars(r.stats) for r in sim.replicas], json.dumps(aggregate_metrics(sim), sort_keys=True)


@pytest.mark.parametrize("scheduler", CACHING_SCHEDULERS)
def test_caching_without_hashes_or_hashes_without_caching_change_nothing(scheduler):
    reqs = random_requests(300, 4, qps=30.0)
    hashes = shared_prefix_hashes(reqs, 4)
    plain = simulate(reqs, replicas=2, scheduler=scheduler, num_blocks=900)
    hashed_off = simulate(reqs, replicas=2, scheduler=scheduler, num_blocks=900, hashes=hashes)
    on_unhashed = simulate(reqs, replicas=2, scheduler=scheduler, num_blocks=900, prefix_caching=True)
    assert sum(plain.table.restarts) > 0
    assert outputs(hashed_off) == outputs(plain)
    columns, stats, report = outputs(on_unhashed)
    assert columns == outputs(plain)[0]
    # caching on leaves Sarathi's admissions to the formation instead of the decode-run loop,
    # which sums the same iteration times in another order: equal up to rounding
    for cached, uncached in zip(stats, outputs(plain)[1]):
        assert cached == pytest.approx(uncached, rel=1e-12)
    assert json.loads(report)["prefix_cache_hit_rate"] == 0.0
    assert "prefix_cache_hit_rate" not in json.loads(outputs(plain)[2])


FROZEN_DIGESTS = {
    "sarathi": "84863ec2ab60f5522bf26e16eef2f9f4843ceb3aff0044587fab7669c14baa90",
    "vllm": "defeed2785eb6744c556524ef1678579f4c97a76320a3d38c47f2bb74aa60503",
    "orca": "582e7d848f6afc4476c6f38fcaa5a5925936c4bbed4cb0a150f3650a4a41ec43",
}
"""sha256 of :func:`run_digest` computed at commit adad08b, before prefix caching existed
(the same function run in a worktree of that commit); the runs preempt (sarathi 17, vllm 27)."""


def run_digest(scheduler: str, tmp_path) -> str:
    """The JSON report and full CSV of a run with memory pressure and the builtin time model."""
    tm = builtin_time_model("meta-llama/Llama-2-7b-hf", "a100", 1)
    sim = simulate(random_requests(300, 9, qps=30.0), replicas=2, scheduler=scheduler, num_blocks=1200,
                   time_model=tm)
    path = tmp_path / f"{scheduler}.csv"
    RequestMetrics.from_simulator(sim).write_csv(path, layout="full")
    report = json.dumps(aggregate_metrics(sim), sort_keys=True)
    return hashlib.sha256(report.encode() + path.read_bytes()).hexdigest()


@pytest.mark.parametrize("scheduler", sorted(FROZEN_DIGESTS))
def test_caching_off_reproduces_the_results_from_before_prefix_caching(scheduler, tmp_path):
    assert run_digest(scheduler, tmp_path) == FROZEN_DIGESTS[scheduler]


# ------------------------------------------------------------------ configuration
def test_orca_rejects_prefix_caching_by_name():
    with pytest.raises(ConfigError, match=r"cluster.replica.prefix_caching: .*orca"):
        ClusterConfig(replica=ReplicaConfig(scheduler="orca", prefix_caching=True)).validate()
    with pytest.raises(ConfigError, match="prefix_caching: must be true or false"):
        ReplicaConfig(prefix_caching=1).validate()


def test_cli_prefix_caching_flag_writes_the_hit_rate_and_the_cached_tokens_column(tmp_path, capsys):
    out_json, out_csv = tmp_path / "m.json", tmp_path / "r.csv"
    main(["simulate", "--replicas", "1", "--num-requests", "20", "--prefix-caching", "--output-json",
          str(out_json), "--output-csv", str(out_csv)])
    report = json.loads(out_json.read_text())
    assert report["prefix_cache_hit_rate"] == 0.0  # the default workload has no prefix identity
    assert report["replicas"][0]["prefix_cache_evictions"] == 0
    assert out_csv.read_text().splitlines()[0].endswith(CACHED_TOKENS_COLUMN)
    assert main(["simulate", "--scheduler", "orca", "--prefix-caching", "--num-requests", "5"]) == 2
    assert "prefix_caching" in capsys.readouterr().err
