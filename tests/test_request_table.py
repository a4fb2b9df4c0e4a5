"""The compact request table and the per-request CSV streamed while a run goes (long traces)."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from test_simulator import ORACLE_CASES, AffineTime, random_requests, requests, shared_prefix_hashes
from vidur_env.cluster import ClusterSimulator
from vidur_env.config import ClusterConfig, ReplicaConfig
from vidur_env.metrics import CSV_LAYOUTS, CsvStream, RequestMetrics, aggregate_metrics
from vidur_env.request_table import COMPACT_TYPES, NoBlockHashes, RequestTable, typed_column
from vidur_env.routers import make_router
from vidur_env.simulation import Scenario, run_simulation


def two_replicas(reqs, scheduler="sarathi", caching=False, compact=False) -> ClusterSimulator:
    """Two replicas short of memory (so requests restart), routed round robin, not yet run."""
    spec = ReplicaConfig(scheduler=scheduler, num_blocks=900, prefix_caching=caching)
    return ClusterSimulator(ClusterConfig(num_replicas=2, replica=spec), reqs, time_models=[AffineTime()] * 2,
                            compact=compact)


def round_robin():
    router = make_router("round_robin")
    router.reset(2, np.random.default_rng(0))
    return router


def workload(seed, caching, qps=30.0):
    reqs = random_requests(300, seed, qps=qps)
    if caching:
        reqs.block_hashes = shared_prefix_hashes(reqs, seed)
    return reqs


@pytest.mark.parametrize("scheduler,caching", ORACLE_CASES)
def test_a_compact_table_runs_exactly_as_lists(scheduler, caching):
    """Typed arrays hold and give back the same numbers: every column, every replica total and
    the metrics report are those of the list table."""
    reqs = workload(4, caching)
    lists, compact = (two_replicas(reqs, scheduler, caching, compact) for compact in (False, True))
    for sim in (lists, compact):
        sim.run(round_robin())
    assert compact.table.compact and not lists.table.compact
    for column in COMPACT_TYPES:
        assert list(getattr(compact.table, column)) == getattr(lists.table, column), column
    if scheduler != "orca":
        assert sum(lists.table.restarts) > 0, "the case must exercise preemption"
    if caching:
        assert sum(lists.table.cached_tokens) > 0, "the case must exercise cache hits"
    assert json.dumps(aggregate_metrics(compact)) == json.dumps(aggregate_metrics(lists))


def test_a_compact_table_refuses_a_count_its_type_cannot_hold():
    """A 4-byte column must not wrap a larger count silently (NumPy's cast would)."""
    with pytest.raises(OverflowError, match="'i'"):
        typed_column("i", np.array([1, 2**31]), 2)
    with pytest.raises(OverflowError):
        RequestTable(np.zeros(1), np.array([2**31]), np.array([1]), compact=True)
    assert list(typed_column("i", np.array([2**31 - 1, -5]), 2)) == [2**31 - 1, -5]


def test_no_block_hashes_reads_none_for_every_request():
    hashes = NoBlockHashes(3)
    assert len(hashes) == 3 and list(hashes) == [None] * 3 and hashes[-1] is None and hashes[1:] == [None, None]
    with pytest.raises(IndexError):
        hashes[3]
    reqs = random_requests(4, 1)
    assert isinstance(RequestTable(reqs.arrived_at, reqs.num_prefill_tokens, reqs.num_decode_tokens,
                                   compact=True).block_hashes, NoBlockHashes)


def test_the_metrics_of_a_completed_compact_run_are_views_of_its_table():
    """No second copy of a long trace's columns: the metrics read the table's memory."""
    sim = two_replicas(workload(2, False), compact=True)
    sim.run(round_robin())
    metrics = RequestMetrics.from_simulator(sim)
    assert np.shares_memory(metrics.completed_at, np.asarray(sim.table.completed_at))
    assert np.shares_memory(metrics.current_decode_tokens, np.asarray(sim.table.decode))
    assert list(metrics.request_id) == list(range(300))


@pytest.mark.parametrize("caching", [False, True])
@pytest.mark.parametrize("layout", list(CSV_LAYOUTS))
def test_the_streamed_csv_is_the_csv_written_at_the_end(tmp_path, layout, caching):
    """Written in parts while the run goes, the file is byte for byte the one ``write_csv``
    writes from a list table afterwards, and most of it is on disk before the drain (a load
    the replicas keep up with)."""
    reqs = workload(5, caching, qps=5.0)
    at_end = two_replicas(reqs, caching=caching)
    at_end.run(round_robin())
    RequestMetrics.from_simulator(at_end).write_csv(tmp_path / "end.csv", layout)

    sim, router = two_replicas(reqs, caching=caching, compact=True), round_robin()
    with CsvStream(tmp_path / "stream.csv", layout, caching) as stream:
        while not sim.done_routing:
            sim.route(router, until=sim.next_request + 50)
            stream.write_completed(sim.table, sim.next_request)
        before_drain = stream.rows
        sim.drain()
        stream.write_completed(sim.table, sim.next_request)
    assert (tmp_path / "stream.csv").read_bytes() == (tmp_path / "end.csv").read_bytes()
    assert stream.rows == 300 and before_drain > 150


def test_a_row_waits_for_the_earlier_requests_in_flight(tmp_path):
    """Rows are in request order: a short request finishing before a long earlier one is
    written after it, once it completes."""
    sim = two_replicas(requests([0.0, 0.001], [100, 10], [300, 2]), compact=True)
    sim.route(round_robin())
    with CsvStream(tmp_path / "r.csv", "full", False) as stream:
        sim.advance_to(1.0)
        assert sim.table.completed_at[1] > 0 > sim.table.completed_at[0]
        stream.write_completed(sim.table, sim.next_request)
        assert stream.rows == 0
        sim.drain()
        stream.write_completed(sim.table, sim.next_request)
        assert stream.rows == 2
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["0", "1"]


def test_run_simulation_streams_the_csv_its_metrics_would_write(tmp_path):
    base = Scenario()
    scenario = replace(base, cluster=replace(base.cluster, num_replicas=3), workload=replace(base.workload, num_requests=400))
    result = run_simulation(scenario, seed=3, csv_path=tmp_path / "streamed.csv", csv_layout="full")
    result.requests.write_csv(tmp_path / "after.csv", "full")
    assert (tmp_path / "streamed.csv").read_bytes() == (tmp_path / "after.csv").read_bytes()
    assert result.simulator.table.compact
