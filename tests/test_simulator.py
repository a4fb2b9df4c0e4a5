"""Behaviour of the cluster simulator on hand-checkable cases and random workloads."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from vidur_env.cluster import ClusterSimulator, SimulationError
from vidur_env.config import ClusterConfig, ReplicaConfig
from vidur_env.metrics import RequestMetrics, aggregate_metrics
from vidur_env.routers import make_router
from vidur_env.schedulers import SCHEDULER_NAMES, ReplicaScheduler
from vidur_env.time_model import builtin_time_model


class AffineTime:
    """A transparent time model: a fixed cost plus a cost per token and per KV token."""

    def __init__(self, base: float = 0.01, per_token: float = 1e-4, per_kv: float = 1e-6) -> None:
        self.base, self.per_token, self.per_kv = base, per_token, per_kv

    def iteration_time(self, num_decodes, decode_kv_sum, prefill_chunks, prefill_kv) -> float:
        tokens = num_decodes + sum(prefill_chunks)
        kv = decode_kv_sum + sum(prefill_kv)
        return self.base + self.per_token * tokens + self.per_kv * kv

    def decode_run_time(self, num_decodes, decode_kv_sum) -> tuple[float, int]:
        # the time depends on the exact KV, so it holds for one iteration only
        return self.iteration_time(num_decodes, decode_kv_sum, (), ()), 1


def requests(arrivals, prompts, outputs):
    return SimpleNamespace(
        arrived_at=np.asarray(arrivals, dtype=float),
        num_prefill_tokens=np.asarray(prompts, dtype=np.int64),
        num_decode_tokens=np.asarray(outputs, dtype=np.int64),
    )


def simulate(reqs, *, replicas=1, scheduler="sarathi", router="round_robin", time_model=None, seed=0, fast=True,
             hashes=None, **replica_kwargs):
    spec = ReplicaConfig(scheduler=scheduler, **replica_kwargs)
    cluster = ClusterConfig(num_replicas=replicas, replica=spec)
    model = time_model or AffineTime()
    sim = ClusterSimulator(cluster, reqs, time_models=[model] * replicas)
    if hashes is not None:
        with_hashes(sim, hashes)
    for r in sim.replicas:
        r.fast_forward = fast
        r.group_decodes = fast
    policy = make_router(router)
    policy.reset(replicas, np.random.default_rng(seed))
    sim.run(policy)
    return sim


class BatchLog(AffineTime):
    """AffineTime that records the arguments of every iteration it times."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple] = []

    def iteration_time(self, num_decodes, decode_kv_sum, prefill_chunks, prefill_kv) -> float:
        self.batches.append((num_decodes, decode_kv_sum, tuple(prefill_chunks), tuple(prefill_kv)))
        return super().iteration_time(num_decodes, decode_kv_sum, prefill_chunks, prefill_kv)


@pytest.mark.parametrize("fast", [True, False])
def test_a_one_token_last_chunk_reaches_the_time_model_as_a_prefill_chunk(fast):
    """Beside one running decode, Sarathi's 512-token budget cuts a 512-token prompt into 511 + 1;
    the last chunk goes to the time model as a prefill chunk beside that one decode (the keying
    decides how to key it: Vidur main as a prefill, the PyPI build as a decode), on the fast
    paths and off them."""
    log = BatchLog()
    simulate(requests([0.0, 0.001], [40, 512], [30, 3]), time_model=log, fast=fast)
    assert log.batches[1:3] == [(1, 41, (511,), (0,)), (1, 42, (1,), (511,))]


def random_requests(n, seed, qps=20.0, max_prompt=2000, max_output=400):
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / qps, size=n))
    return requests(arrivals, rng.integers(1, max_prompt, size=n), rng.integers(1, max_output, size=n))


def shared_prefix_hashes(reqs, seed, num_prefixes=4, max_prefix_blocks=60):
    """Block hashes as a workload would give them: each request starts with one of a few shared
    prefixes (a random number of its blocks, so prefixes also end mid-way) and goes on with
    content of its own, over its whole token stream (prompt and output)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_prefix_blocks, size=num_prefixes)
    hashes = []
    for rid, (p, d) in enumerate(zip(reqs.num_prefill_tokens, reqs.num_decode_tokens)):
        s = rng.integers(num_prefixes)
        shared = min(int(rng.integers(0, lengths[s] + 1)), (p + d) // 16)
        hashes.append(tuple(range(s * 10**4, s * 10**4 + shared))
                      + tuple(range(10**8 + rid * 10**4 + shared, 10**8 + rid * 10**4 + (p + d) // 16)))
    return hashes


def with_hashes(sim, hashes):
    """Give the requests of ``sim`` their block hashes (the workload layer's job, done by hand)."""
    sim.table.block_hashes[:] = hashes
    return sim


def test_single_request_ttft_is_prefill_and_e2e_adds_decode_iterations():
    tm = AffineTime()
    sim = simulate(requests([1.0], [100], [10]), time_model=tm)
    m = RequestMetrics.from_simulator(sim)
    prefill = tm.iteration_time(0, 0, (100,), (0,))
    assert m.prefill_e2e_time[0] == pytest.approx(prefill)
    # decode iteration k sees the prompt, the first token and k-1 decoded tokens as context
    decodes = sum(tm.iteration_time(1, 101 + k, (), ()) for k in range(9))
    assert m.request_e2e_time[0] == pytest.approx(prefill + decodes)
    assert m.request_scheduling_delay[0] == 0.0


def test_single_output_token_completes_with_the_prefill():
    sim = simulate(requests([0.0], [64], [1]))
    m = RequestMetrics.from_simulator(sim)
    assert m.completed_at[0] == m.prefill_completed_at[0]


def test_sarathi_chunks_a_long_prompt_by_the_token_budget():
    tm = AffineTime()
    sim = simulate(requests([0.0], [1000], [2]), time_model=tm)
    chunks = tm.iteration_time(0, 0, (512,), (0,)) + tm.iteration_time(0, 0, (488,), (512,))
    m = RequestMetrics.from_simulator(sim)
    assert m.prefill_e2e_time[0] == pytest.approx(chunks)
    assert sim.replicas[0].stats.num_iterations == 3


def test_two_requests_share_a_prefill_batch_then_decode_together():
    tm = AffineTime()
    sim = simulate(requests([0.0, 0.0], [100, 200], [3, 3]), time_model=tm)
    m = RequestMetrics.from_simulator(sim)
    prefill = tm.iteration_time(0, 0, (100, 200), (0, 0))
    assert m.prefill_e2e_time == pytest.approx([prefill, prefill])
    decode = tm.iteration_time(2, 101 + 201, (), ()) + tm.iteration_time(2, 102 + 202, (), ())
    assert m.request_e2e_time == pytest.approx([prefill + decode] * 2)
    assert sim.replicas[0].stats.num_iterations == 3


def test_sarathi_mixes_decodes_with_a_new_prefill_chunk():
    tm = AffineTime()
    # request 1 arrives while request 0 decodes: the next batch holds 0's decode and 1's chunk
    sim = simulate(requests([0.0, 0.011], [100, 600], [50, 2]), time_model=tm)
    first_end = tm.iteration_time(0, 0, (100,), (0,))
    second = tm.iteration_time(1, 101, (511,), (0,))
    assert sim.table.scheduled_at[1] == pytest.approx(first_end)
    ends_second = first_end + second
    # the rest of request 1's prompt (89 tokens) runs in the third iteration beside 0's decode
    third = tm.iteration_time(1, 102, (89,), (511,))
    assert sim.table.prefill_completed_at[1] == pytest.approx(ends_second + third)


def test_vllm_runs_a_new_prompt_before_continuing_decodes():
    tm = AffineTime()
    sim = simulate(requests([0.0, 0.011], [100, 600], [50, 2]), scheduler="vllm", time_model=tm)
    first_end = tm.iteration_time(0, 0, (100,), (0,))
    assert sim.table.scheduled_at[1] == pytest.approx(first_end)
    # prefill-first: request 1's whole prompt runs alone, request 0's decode waits
    assert sim.table.prefill_completed_at[1] == pytest.approx(first_end + tm.iteration_time(0, 0, (600,), (0,)))


def test_vllm_padded_rule_limits_the_prefill_batch():
    sim = simulate(requests([0.0] * 3, [1500, 1500, 100], [2, 2, 2]), scheduler="vllm")
    # 2 x 1500 fits in 4096 but 3 x 1500 does not: request 2 waits for the next prefill batch
    assert sim.table.scheduled_at[0] == sim.table.scheduled_at[1] == 0.0
    assert sim.table.scheduled_at[2] > 0.0
    summed = simulate(requests([0.0] * 3, [1500, 1500, 100], [2, 2, 2]), scheduler="vllm", vllm_batch_rule="sum")
    assert summed.table.scheduled_at[2] == 0.0


def test_preemption_under_memory_pressure_restarts_and_completes_everything():
    reqs = requests([0.0] * 6, [200] * 6, [300] * 6)
    # 6 requests of 500 tokens need ~32 blocks each; 100 blocks force recompute preemption
    sim = simulate(reqs, num_blocks=100)
    m = RequestMetrics.from_simulator(sim)
    assert len(m.request_id) == 6
    assert m.request_num_restarts.sum() > 0
    assert sim.replicas[0].stats.num_preemptions == m.request_num_restarts.sum()
    assert sim.replicas[0].stats.peak_blocks <= 100
    # tokens are conserved across restarts: every request ends with all its tokens processed
    table = sim.table
    for rid in range(6):
        assert table.processed[rid] == table.orig_prefill[rid] + table.orig_decode[rid]
        assert table.prefill[rid] + table.decode[rid] == table.orig_prefill[rid] + table.orig_decode[rid]


def test_restart_keeps_first_schedule_and_first_token_times():
    sim = simulate(requests([0.0] * 6, [200] * 6, [300] * 6), num_blocks=100)
    table = sim.table
    restarted = [rid for rid in range(6) if table.restarts[rid]]
    assert restarted
    for rid in restarted:
        assert table.scheduled_at[rid] <= table.prefill_completed_at[rid] < table.completed_at[rid]


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
@pytest.mark.parametrize("seed", [0, 1])
def test_invariants_on_random_workloads(scheduler, seed):
    reqs = random_requests(300, seed, qps=30.0)
    sim = simulate(reqs, replicas=2, scheduler=scheduler, router="random", seed=seed, num_blocks=1200)
    table = sim.table
    assert all(t >= 0 for t in table.completed_at), "every request completes"
    for rid in range(len(table)):
        assert table.processed[rid] == table.orig_prefill[rid] + table.orig_decode[rid]
        assert table.arrived_at[rid] <= table.scheduled_at[rid] <= table.prefill_completed_at[rid] <= table.completed_at[rid]
        assert table.blocks[rid] == 0
    for replica in sim.replicas:
        assert replica.allocated_blocks == 0
        assert replica.num_allocated_requests == 0
        assert replica.stats.peak_blocks <= replica.num_blocks
        assert not replica.scheduler.waiting and not replica.scheduler.running
    if scheduler == "orca":
        assert sum(table.restarts) == 0


class StateRecorder:
    """A router that records every replica's public state at each decision, then delegates."""

    FIELDS = ("num_waiting", "waiting_prompt_tokens", "num_allocated_requests", "num_in_batch",
              "allocated_blocks", "batch_end", "is_busy")

    def __init__(self, router: str, num_replicas: int) -> None:
        self.router = make_router(router)
        self.router.reset(num_replicas, np.random.default_rng(0))
        self.states: list[tuple] = []

    def __call__(self, sim: ClusterSimulator, rid: int) -> int:
        self.states.append(tuple(tuple(getattr(r, f) for f in self.FIELDS) for r in sim.replicas))
        return self.router(sim, rid)


class CacheStateRecorder(StateRecorder):
    """Also records each replica's prefix cache as a cache-aware router would read it: the
    incoming request's match, the cached blocks, the evictions so far."""

    def __call__(self, sim: ClusterSimulator, rid: int) -> int:
        hashes = sim.table.block_hashes[rid]
        self.states.append(tuple((r.kv.match_blocks(hashes), r.kv.cached_blocks, r.kv.evictions)
                                 for r in sim.replicas))
        return super().__call__(sim, rid)


def oracle_sim(reqs, scheduler, time_model, fast, hashes=None) -> ClusterSimulator:
    """Two replicas with both fast paths on or off; with ``hashes``, prefix caching is on."""
    spec = ReplicaConfig(scheduler=scheduler, num_blocks=900, prefix_caching=hashes is not None)
    sim = ClusterSimulator(ClusterConfig(num_replicas=2, replica=spec), reqs, time_models=[time_model] * 2)
    for r in sim.replicas:
        r.fast_forward = r.group_decodes = fast
    if hashes is not None:
        with_hashes(sim, hashes)
    return sim


def run_recorded(reqs, scheduler, router, time_model, fast, hashes=None):
    """Run :func:`oracle_sim` recording the state a router sees at every decision."""
    sim = oracle_sim(reqs, scheduler, time_model, fast, hashes)
    recorder = (CacheStateRecorder if hashes is not None else StateRecorder)(router, 2)
    sim.run(recorder)
    return sim, recorder.states


CACHING_SCHEDULERS = tuple(name for name in SCHEDULER_NAMES if name != "orca")
"""Schedulers where prefix caching applies (Orca reserves max_tokens up front: no sharing)."""
ORACLE_CASES = [(s, False) for s in SCHEDULER_NAMES] + [(s, True) for s in CACHING_SCHEDULERS]
"""(scheduler, prefix caching) pairs the fast-path oracles run."""


@pytest.mark.parametrize("time_model", ["affine", "builtin"])
@pytest.mark.parametrize("router", ["round_robin", "jsq"])
@pytest.mark.parametrize("scheduler,caching", ORACLE_CASES)
def test_fast_paths_change_no_result(scheduler, caching, router, time_model):
    """Grouped decodes and the decode-run loop (suspended at arrivals and resumed) reproduce
    Vidur's per-request path exactly: every timestamp, and the public state a router sees at
    every decision (with prefix caching, the cache too). The builtin model's decode times hold
    for runs of iterations (rounded KV), the affine one's for one iteration."""
    model = AffineTime() if time_model == "affine" else builtin_time_model("meta-llama/Llama-2-7b-hf", "a100", 1)
    reqs = random_requests(400, 3, qps=25.0 if time_model == "affine" else 40.0)
    hashes = shared_prefix_hashes(reqs, 3) if caching else None
    fast, fast_states = run_recorded(reqs, scheduler, router, model, fast=True, hashes=hashes)
    slow, slow_states = run_recorded(reqs, scheduler, router, model, fast=False, hashes=hashes)
    for column in ("scheduled_at", "prefill_completed_at", "completed_at", "restarts", "replica", "cached_tokens"):
        assert getattr(fast.table, column) == getattr(slow.table, column), column
    assert fast_states == slow_states
    if scheduler != "orca":
        assert sum(slow.table.restarts) > 0, "the case must exercise preemption"
    if caching:
        assert sum(slow.table.cached_tokens) > 0, "the case must exercise cache hits"
        assert sum(r.kv.evictions for r in slow.replicas) > 0, "the case must exercise eviction"
    for a, b in zip(fast.replicas, slow.replicas):
        assert a.stats.num_iterations == b.stats.num_iterations
        assert a.stats.batch_size_sum == b.stats.batch_size_sum
        assert a.stats.tokens_sum == b.stats.tokens_sum
        assert a.stats.prefill_tokens_sum == b.stats.prefill_tokens_sum
        assert a.stats.peak_blocks == b.stats.peak_blocks
        assert a.stats.busy_time == pytest.approx(b.stats.busy_time, rel=1e-12)
        assert a.stats.block_time == pytest.approx(b.stats.block_time, rel=1e-12)


@pytest.mark.parametrize("scheduler", CACHING_SCHEDULERS)
def test_fast_paths_change_no_result_with_two_hot_prefixes(scheduler):
    """Prefix caching where most requests share one of two long prefixes: admitting one
    request makes blocks the next one hits referenced, which the decode-run loop must not
    rule out (the oracle above with few shared blocks does not reach that case)."""
    reqs = random_requests(400, 6, qps=30.0, max_prompt=1200)
    hashes = shared_prefix_hashes(reqs, 6, num_prefixes=2, max_prefix_blocks=60)
    fast, fast_states = run_recorded(reqs, scheduler, "round_robin", AffineTime(), fast=True, hashes=hashes)
    slow, slow_states = run_recorded(reqs, scheduler, "round_robin", AffineTime(), fast=False, hashes=hashes)
    for column in ("scheduled_at", "prefill_completed_at", "completed_at", "restarts", "cached_tokens"):
        assert getattr(fast.table, column) == getattr(slow.table, column), column
    assert fast_states == slow_states
    assert sum(slow.table.cached_tokens) > 0 and sum(slow.table.restarts) > 0


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_one_iteration_resume_is_the_run_loop(scheduler, monkeypatch):
    """In a large fleet most resumes finish one decode iteration and start the next
    (:meth:`DecodeRuns.resume_decode`); that shortcut makes exactly the updates of the full
    loop: same timestamps, same states at every decision, bit-identical running totals."""
    from vidur_env.decode_runs import DecodeRuns

    reqs = random_requests(1500, 7, qps=300.0, max_output=200)
    model = builtin_time_model("meta-llama/Llama-2-7b-hf", "a100", 1)
    shortcut = DecodeRuns.resume_decode
    hits = []

    def counted(self, now, horizon):
        hits.append(shortcut(self, now, horizon))
        return hits[-1]

    def run(resume):
        monkeypatch.setattr(DecodeRuns, "resume_decode", resume)
        sim = ClusterSimulator(ClusterConfig(num_replicas=32, replica=ReplicaConfig(scheduler=scheduler)), reqs,
                               time_models=[model] * 32)
        recorder = StateRecorder("jsq", 32)
        sim.run(recorder)
        return sim, recorder.states

    fast, fast_states = run(counted)
    slow, slow_states = run(lambda self, now, horizon: False)
    assert sum(hits) > 500, "the case must take the shortcut often"
    for column in ("scheduled_at", "prefill_completed_at", "completed_at", "restarts", "replica"):
        assert getattr(fast.table, column) == getattr(slow.table, column), column
    assert fast_states == slow_states
    assert [a.stats for a in fast.replicas] == [b.stats for b in slow.replicas]


class BatchRecorder(StateRecorder):
    """Records the ids of every replica's batch in flight at each decision."""

    FIELDS = ("batch",)


@pytest.mark.parametrize("scheduler,caching", ORACLE_CASES)
def test_batch_in_flight_is_the_same_on_every_path(scheduler, caching):
    """The batch a router would see at each decision, in Vidur's order, whether the decode-run
    loop left it suspended, the grouped path formed it, or the per-request path did."""
    reqs = random_requests(300, 5, qps=25.0)
    seen = []
    suspended = 0
    for fast in (True, False):
        sim = oracle_sim(reqs, scheduler, AffineTime(), fast, shared_prefix_hashes(reqs, 5) if caching else None)
        recorder = BatchRecorder("round_robin", 2)

        def route(sim, rid, recorder=recorder):
            nonlocal suspended
            suspended += sum(r.runs.suspended is not None for r in sim.replicas)
            return recorder(sim, rid)

        sim.run(route)
        seen.append(recorder.states)
    assert suspended > 0, "the case must show suspended batches"
    assert seen[0] == seen[1]


@pytest.mark.parametrize("scheduler,caching", ORACLE_CASES)
def test_without_the_steady_run_hook_a_scheduler_gives_the_same_results(scheduler, caching):
    """The base class's default hook (no steady runs) is correct for every scheduler: only the
    grouped decodes run fast, and every timestamp matches the per-request path."""
    reqs = random_requests(300, 6, qps=25.0)
    results = []
    for fast in (True, False):
        sim = oracle_sim(reqs, scheduler, AffineTime(), fast, shared_prefix_hashes(reqs, 6) if caching else None)
        for r in sim.replicas:
            if fast:  # every fast path on, but the scheduler never offers a steady run
                r.scheduler.steady_run = ReplicaScheduler.steady_run.__get__(r.scheduler)
        recorder = StateRecorder("round_robin", 2)
        sim.run(recorder)
        results.append((sim.table.scheduled_at, sim.table.prefill_completed_at, sim.table.completed_at,
                        sim.table.cached_tokens, recorder.states))
    assert results[0] == results[1]


def test_same_seed_same_results_bit_for_bit():
    reqs = random_requests(200, 7)
    a = simulate(reqs, replicas=3, router="random", seed=11)
    b = simulate(reqs, replicas=3, router="random", seed=11)
    assert a.table.completed_at == b.table.completed_at
    assert a.table.replica == b.table.replica
    c = simulate(reqs, replicas=3, router="random", seed=12)
    assert c.table.replica != a.table.replica


def test_lor_counts_only_waiting_requests():
    # all arrive at once: lor sees the queue grow on replica 0 only after it gets a request
    sim = simulate(requests([0.0] * 4, [100] * 4, [5] * 4), replicas=2, router="lor")
    assert sim.table.replica == [0, 1, 0, 1]


@pytest.mark.parametrize("arrivals, prompts, outputs, message", [
    ([0.0, 1.0, 2.0], [10, 0, 10], [5, 5, 5], "request 1: prompt and output need at least one token"),
    ([0.0, 1.0, 2.0], [10, 10, 10], [5, 5, 0], "request 2: prompt and output need at least one token"),
    ([0.0, 2.0, 1.0], [10, 10, 10], [5, 5, 5], "request 2: arrival times must be non-decreasing"),
])
def test_unservable_requests_are_rejected_by_index(arrivals, prompts, outputs, message):
    with pytest.raises(SimulationError, match=message):
        ClusterSimulator(ClusterConfig(num_replicas=1), requests(arrivals, prompts, outputs), time_models=[AffineTime()])


def test_request_longer_than_max_tokens_is_rejected_by_name():
    with pytest.raises(SimulationError, match="request 0.*max_tokens"):
        ClusterSimulator(ClusterConfig(num_replicas=1), requests([0.0], [4000], [200]), time_models=[AffineTime()])


def test_aggregate_metrics_report_vidur_names_and_replica_figures():
    sim = simulate(random_requests(100, 5), replicas=2)
    report = aggregate_metrics(sim)
    for name in ("request_e2e_time", "prefill_e2e_time", "request_scheduling_delay",
                 "request_e2e_time_normalized", "decode_time_execution_plus_preemption_normalized"):
        assert set(report[name]) == {"mean", "p50", "p90", "p99", "p99.9", "max"}
    assert report["num_requests"] == 100
    assert sum(r["num_requests"] for r in report["replicas"]) == 100
    assert all(0.0 < r["busy_fraction"] <= 1.0 for r in report["replicas"])


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_fast_paths_match_at_the_batch_cap(scheduler):
    reqs = random_requests(300, 4, qps=40.0, max_prompt=600, max_output=200)
    blocks = 2000 if scheduler == "orca" else 400  # Orca reserves 256 blocks per request
    fast = simulate(reqs, replicas=1, scheduler=scheduler, batch_size_cap=6, num_blocks=blocks, fast=True)
    slow = simulate(reqs, replicas=1, scheduler=scheduler, batch_size_cap=6, num_blocks=blocks, fast=False)
    assert max(r.stats.batch_size_sum / r.stats.num_iterations for r in slow.replicas) > 4
    for column in ("scheduled_at", "prefill_completed_at", "completed_at", "restarts"):
        assert getattr(fast.table, column) == getattr(slow.table, column), column


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_fast_paths_match_when_arrivals_coincide_with_iteration_ends(scheduler):
    """Every iteration takes exactly 1/64 s, and requests arrive on that grid: an iteration
    ending at an arrival's instant finishes first, and the next one is formed with the new
    request queued (Vidur's event order), on the fast paths as on the per-request path."""
    tick = AffineTime(base=1 / 64, per_token=0.0, per_kv=0.0)
    rng = np.random.default_rng(8)
    arrivals = np.sort(rng.integers(0, 400, size=120)) / 64
    reqs = requests(arrivals, rng.integers(1, 300, size=120), rng.integers(1, 60, size=120))
    fast = simulate(reqs, scheduler=scheduler, time_model=tick, fast=True)
    slow = simulate(reqs, scheduler=scheduler, time_model=tick, fast=False)
    for column in ("scheduled_at", "prefill_completed_at", "completed_at"):
        assert getattr(fast.table, column) == getattr(slow.table, column), column


def test_the_event_heap_leaves_no_replica_behind():
    """The cluster advances only the replicas its heap says are due; at every arrival no
    replica may still have an event due by then (what advancing every replica guaranteed),
    and ``changed`` lists the dispatched replica and every replica that moved."""
    from dataclasses import replace as with_fields

    from vidur_env.cluster import build_time_models
    from vidur_env.simulation import Scenario, resolve_workload
    from vidur_env.workload import generate_requests

    scenario = Scenario(load=1.0)
    scenario = with_fields(scenario, cluster=with_fields(scenario.cluster, num_replicas=32),
                           workload=with_fields(scenario.workload, num_requests=2000))
    models = build_time_models(scenario.cluster)
    requests = generate_requests(resolve_workload(scenario, models), np.random.default_rng(5))
    sim = ClusterSimulator(scenario.cluster, requests, max_tokens=scenario.workload.max_tokens, time_models=models)
    rng = np.random.default_rng(0)
    while not sim.done_routing:
        before = [(r.batch_end, r.pending_at, r.stats.num_iterations) for r in sim.replicas]
        rid = sim.advance_to_next_arrival()
        now = sim.table.arrived_at[rid]
        assert not [r.replica_id for r in sim.replicas if r.batch_end <= now or r.pending_at < now]
        moved = {i for i, r in enumerate(sim.replicas) if (r.batch_end, r.pending_at, r.stats.num_iterations) != before[i]}
        assert moved <= set(sim.changed)
        sim.dispatch(int(rng.integers(sim.num_replicas)))
    sim.drain()
    assert (np.asarray(sim.table.completed_at) > 0).all()


class LoadRecorder(StateRecorder):
    """A load-only router recording the counts such a router may read, at each decision."""

    FIELDS = ("num_waiting", "waiting_prompt_tokens", "num_allocated_requests")
    quiet = "steady"


@pytest.mark.parametrize("num_blocks", [None, 400])
@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
@pytest.mark.parametrize("router", ["jsq", "round_robin", "speed_aware_lwl"])
def test_quiet_replicas_change_no_result(scheduler, router, num_blocks, monkeypatch):
    """Under a load-only router a replica in a decode run goes quiet (skipped until its counts
    may change or it gets a request) and is then brought through the arrivals it skipped:
    the counts read at every decision, the decisions, every timestamp and every running total
    (bit for bit) are those of advancing it at each arrival. Routing in two calls wakes every
    quiet replica at the end of the first. With few KV blocks, windows end at the block limit
    and requests are preempted."""
    cluster, reqs, max_tokens, models = quiet_case(scheduler, num_blocks=num_blocks)
    catch_ups = count_catch_ups(monkeypatch)
    chunk_replays = count_chunk_replays(monkeypatch)

    def run(quiet):
        monkeypatch.setattr(ClusterSimulator, "quiet_replicas", quiet)
        sim = ClusterSimulator(cluster, reqs, max_tokens=max_tokens, time_models=models)
        recorder = LoadRecorder(router, 32)
        sim.route(recorder, until=1000)
        sim.run(recorder)
        return sim, recorder.states

    (quiet, quiet_states), (plain, plain_states) = run(True), run(False)
    assert len(catch_ups) > 500, "the case must leave replicas quiet often"
    if scheduler == "sarathi":  # the only scheduler whose steady runs carry a partial prefill
        assert sum(chunk_replays) > 300, "the case must replay prompt chunks of quiet replicas"
    if num_blocks is not None and scheduler != "orca":
        assert sum(plain.table.restarts) > 0, "the case must exercise preemption"
    assert_same_run(quiet, plain)
    assert quiet_states == plain_states


def count_catch_ups(monkeypatch) -> list[int]:
    """Patch the simulator to list the replica of every catch-up of a quiet replica (so a test
    can check that its case leaves replicas quiet at all)."""
    calls: list[int] = []
    catch_up = ClusterSimulator._catch_up
    monkeypatch.setattr(ClusterSimulator, "_catch_up", lambda sim, i, end: calls.append(i) or catch_up(sim, i, end))
    return calls


def count_chunk_replays(monkeypatch) -> list[int]:
    """Patch the decode-run loop to list, per replay of a run with a partial prefill, how many
    horizons it took (so a test can check that its case replays prompt chunks at all)."""
    from vidur_env.decode_runs import DecodeRuns

    calls: list[int] = []
    replay = DecodeRuns._replay_prefill

    def counted(runs, horizons, start, end):
        reached = replay(runs, horizons, start, end)
        calls.append(reached - start)
        return reached

    monkeypatch.setattr(DecodeRuns, "_replay_prefill", counted)
    return calls


def assert_same_run(a: ClusterSimulator, b: ClusterSimulator) -> None:
    """Same decisions, timestamps and running totals (bit for bit)."""
    for column in ("scheduled_at", "prefill_completed_at", "completed_at", "restarts", "replica"):
        assert getattr(a.table, column) == getattr(b.table, column), column
    assert [r.stats for r in a.replicas] == [r.stats for r in b.replicas]


def quiet_case(scheduler: str, num_replicas: int = 32, num_requests: int = 3000, num_blocks: int | None = None):
    """(cluster, requests, max_tokens, time models) of the default scenario at 90% load (with
    ``num_blocks``, that many KV blocks per replica)."""
    from dataclasses import replace as with_fields

    from vidur_env.cluster import build_time_models
    from vidur_env.simulation import Scenario, resolve_workload
    from vidur_env.workload import generate_requests

    scenario = Scenario(load=0.9)
    spec = ReplicaConfig(scheduler=scheduler, num_blocks=num_blocks)
    cluster = with_fields(scenario.cluster, num_replicas=num_replicas, replica=spec)
    scenario = with_fields(scenario, cluster=cluster, workload=with_fields(scenario.workload, num_requests=num_requests))
    models = build_time_models(cluster)
    reqs = generate_requests(resolve_workload(scenario, models), np.random.default_rng(4))
    return cluster, reqs, scenario.workload.max_tokens, models


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
@pytest.mark.parametrize("router", ["least_kv", "round_robin", "random", "power_of_two"])
def test_routers_that_read_more_than_load_counts_wake_quiet_replicas(scheduler, router, monkeypatch):
    """least_kv reads KV, which a quiet replica does not keep current but only lets grow: its
    index keeps a quiet replica's score as a lower bound and wakes the replica it would pick.
    Round robin and random read no replica, so every replica stays quiet until it gets a
    request; power of two wakes the two it samples. The decisions, timestamps and totals are
    those of advancing every replica at every arrival."""
    cluster, reqs, max_tokens, models = quiet_case(scheduler)
    catch_ups = count_catch_ups(monkeypatch)

    def run(quiet):
        monkeypatch.setattr(ClusterSimulator, "quiet_replicas", quiet)
        sim = ClusterSimulator(cluster, reqs, max_tokens=max_tokens, time_models=models)
        policy = make_router(router)
        policy.reset(32, np.random.default_rng(0))
        for until in range(0, len(reqs.arrived_at), 100):  # each call ends waking every replica
            sim.route(policy, until=until)
        sim.run(policy)
        return sim

    quiet, plain = run(True), run(False)
    assert len(catch_ups) > 1000, "the case must leave replicas quiet often"
    assert_same_run(quiet, plain)


def test_the_least_kv_scan_lets_no_replica_go_quiet(monkeypatch):
    """Without its index least_kv reads every replica's KV, so no replica may go quiet."""
    cluster, reqs, max_tokens, models = quiet_case("sarathi", num_requests=1000)
    monkeypatch.setattr(ClusterSimulator, "_catch_up", lambda *args: pytest.fail("a replica went quiet"))
    router = make_router("least_kv")
    router.indexed = False
    router.reset(32, np.random.default_rng(0))
    ClusterSimulator(cluster, reqs, max_tokens=max_tokens, time_models=models).run(router)


def test_a_quiet_replica_woken_early_changes_no_result(monkeypatch):
    """``quiet_until`` may answer early (it returns a bound): a replica woken before its load
    counts change is brought up to date and requeued, and nothing else differs. Here every
    answer is halfway between the batch in flight's end and the bound."""
    from vidur_env.decode_runs import DecodeRuns

    cluster, reqs, max_tokens, models = quiet_case("sarathi")
    bound = DecodeRuns.quiet_until

    def early(runs):
        until = bound(runs)
        return None if until is None else runs.suspended.end + (until - runs.suspended.end) / 2

    def run(quiet):
        monkeypatch.setattr(ClusterSimulator, "quiet_replicas", quiet)
        sim = ClusterSimulator(cluster, reqs, max_tokens=max_tokens, time_models=models)
        recorder = LoadRecorder("jsq", 32)
        sim.run(recorder)
        return sim, recorder.states

    monkeypatch.setattr(DecodeRuns, "quiet_until", early)
    (quiet, quiet_states), (plain, plain_states) = run(True), run(False)
    assert_same_run(quiet, plain)
    assert quiet_states == plain_states
