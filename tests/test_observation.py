"""The per-decision observation columns: the request's cost, work sent since the snapshot, the
gap to the best replica, the snapshot's age, the episode's progress and the fluid first-token
wait, each against its definition."""
from __future__ import annotations

from math import inf
from types import SimpleNamespace

import numpy as np
import pytest

from vidur_env.env import VidurRoutingEnv
from vidur_env.observation import (
    COLUMN, EXPECTED_OUTPUT_TOKENS, SCALE, ObservationBuilder, PrefillPlan, ReplicaCosts, decode_observation,
    queued_work_seconds, request_seconds, unsquash,
)

HETERO = {"replicas": [{"device": "a100"}, {"device": "h100"}, {"device": "a100", "tensor_parallel": 2}]}


def play(env, seed=0, steps=None):
    """(observation, decision time, action) of every decision of a random-policy episode."""
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    decisions, terminated = [], False
    while not terminated and (steps is None or len(decisions) < steps):
        action = int(rng.integers(env.num_replicas))
        decisions.append((obs, env.simulator.now, action, env.current_request))
        obs, _, terminated, _, _ = env.step(action)
    return decisions


def column(obs, name):
    return unsquash(obs[:, COLUMN[name]], SCALE[name])


@pytest.mark.parametrize("oracle", [False, True])
def test_request_cost_is_the_requests_estimated_seconds_on_each_replica(oracle):
    env = VidurRoutingEnv(cluster=HETERO, num_requests=40, output_predictor="oracle" if oracle else "none")
    costs = [ReplicaCosts.from_time_model(m) for m in env.time_models]
    for obs, _, _, rid in play(env):
        prompt = env.requests.num_prefill_tokens[rid]
        output = env.requests.num_decode_tokens[rid] if oracle else EXPECTED_OUTPUT_TOKENS
        expected = [request_seconds(prompt, output, c) for c in costs]
        np.testing.assert_allclose(column(obs, "request_cost"), expected, rtol=1e-5)
        assert len(set(expected)) == 3  # three speeds: the column tells replicas apart


def test_fresh_observations_have_no_dispatched_work_and_no_age():
    for obs, *_ in play(VidurRoutingEnv(cluster=HETERO, num_requests=40)):
        assert not obs[:, COLUMN["dispatched_work"]].any() and not obs[:, COLUMN["snapshot_age"]].any()


def test_stale_observations_count_the_work_sent_since_the_snapshot_and_its_age():
    refresh = 0.5
    env = VidurRoutingEnv(cluster=HETERO, num_requests=120, load=1.2, obs_refresh_ms=1000 * refresh)
    decisions = play(env)
    accumulated = 0
    for (obs, t, _, _), (prev, t_prev, action, _) in zip(decisions[1:], decisions):
        np.testing.assert_allclose(column(obs, "snapshot_age"), t - np.floor(t / refresh) * refresh, rtol=1e-5, atol=1e-7)
        sent = column(obs, "dispatched_work")
        if np.floor(t / refresh) != np.floor(t_prev / refresh):
            np.testing.assert_array_equal(sent, 0.0)  # a new snapshot holds everything sent before it
            continue
        expected = column(prev, "dispatched_work")
        expected[action] += column(prev, "request_cost")[action]
        np.testing.assert_allclose(sent, expected, rtol=1e-4, atol=1e-7)
        accumulated += 1
    assert accumulated > 50


def test_work_gap_is_the_distance_to_the_least_total_work():
    env = VidurRoutingEnv(cluster=HETERO, num_requests=120, load=1.2, obs_refresh_ms=200.0)
    for obs, *_ in play(env):
        view = decode_observation(obs)
        total = view.queued_work[0] + view.dispatched_work[0] + view.request_cost[0]
        gap = column(obs, "work_gap")
        np.testing.assert_allclose(gap, total - total.min(), rtol=1e-4, atol=1e-5)
        assert gap.min() == 0.0


def test_requests_left_counts_down_to_the_last_decision():
    env = VidurRoutingEnv(num_replicas=2, num_requests=16)
    decisions = play(env)
    left = [obs[:, COLUMN["requests_left"]] for obs, *_ in decisions]
    np.testing.assert_allclose(left, np.repeat((16 - np.arange(16))[:, None] / 16, 2, axis=1), rtol=1e-6)


def hand_replica(tokens: int, running: int, model) -> SimpleNamespace:
    kv = SimpleNamespace(num_allocated_requests=running, allocated_blocks=0, num_blocks=100)
    return SimpleNamespace(num_waiting=0, waiting_prompt_tokens=tokens, num_allocated_requests=running, num_in_batch=0,
                           batch_end=inf, allocated_blocks=0, num_blocks=100, time_model=model, kv=kv)


class LinearTime:
    def iteration_time(self, num_decodes, decode_kv_sum, chunks, kvs):
        return sum(chunks) * 1e-4 + num_decodes * 1e-3


def test_work_gap_does_not_saturate_when_every_queue_is_long():
    """At 20 s of queued work a 0.5 s difference barely moves queued_work; the gap shows it whole."""
    costs = ReplicaCosts.from_time_model(LinearTime())
    replicas = [hand_replica(200_000, 0, LinearTime()), hand_replica(205_000, 0, LinearTime())]
    assert [queued_work_seconds(r, costs) for r in replicas] == pytest.approx([20.0, 20.5])
    builder = ObservationBuilder([costs, costs], [100, 100], max_tokens=4096,
                                 prefill_plans=[PrefillPlan(LinearTime(), None, 0)] * 2)
    builder.snapshot(replicas, 0.0)
    obs = builder.build(100, 10)
    work = obs[:, COLUMN["queued_work"]]
    gap = obs[:, COLUMN["work_gap"]]
    assert work[1] - work[0] < 0.003
    assert gap[0] == 0.0 and gap[1] == pytest.approx(0.5, abs=1e-6)


def test_fluid_ttft_drains_the_routed_prompts_at_one_second_per_second():
    """Prefill takes 1e-4 s a token here: 1000 tokens sent to replica 0 at t=0 are 0.06 s
    from done at 0.04 s, and all done (with 500 more sent then) by 0.5 s."""
    model = LinearTime()
    costs = ReplicaCosts.from_time_model(model)
    replicas = [hand_replica(0, 0, model), hand_replica(0, 0, model)]
    builder = ObservationBuilder([costs, costs], [100, 100], max_tokens=4096,
                                 prefill_plans=[PrefillPlan(model, None, 0)] * 2)
    builder.snapshot(replicas, 0.0)
    waits = []
    for prompt, now in ((1000, 0.0), (500, 0.04), (100, 0.5)):
        waits.append(column(builder.build(prompt, 10, now), "fluid_ttft"))
        builder.dispatched(0)
    np.testing.assert_allclose(waits, [[0.1, 0.1], [0.06 + 0.05, 0.05], [0.01, 0.01]], rtol=1e-5)


def sarathi_prefill(model, prompt, chunk=512, decodes=32):
    """Sarathi's iterations for a prompt beside 32 decodes at 1024 tokens: 480 prompt tokens each."""
    starts = range(0, prompt, chunk - decodes)
    return sum(model.iteration_time(decodes, decodes * 1024, (min(chunk - decodes, prompt - s),), (s,)) for s in starts)


def test_fluid_ttft_starts_at_the_prompts_own_prefill_time_in_its_schedulers_iterations():
    """Sarathi prefills in chunks beside the decodes, vLLM whole prompts in prefill-only batches."""
    prompt = 1000
    lengths = dict(lengths="fixed", prefill_tokens=prompt, decode_tokens=10, num_requests=8)
    env = VidurRoutingEnv(cluster=HETERO, **lengths)
    obs, _ = env.reset(seed=0)
    expected = [sarathi_prefill(m, prompt) for m in env.time_models]
    np.testing.assert_allclose(column(obs, "fluid_ttft"), expected, rtol=1e-5)
    assert len(set(expected)) == 3
    vllm = VidurRoutingEnv(cluster={"replicas": [dict(r, scheduler="vllm") for r in HETERO["replicas"]]}, **lengths)
    obs, _ = vllm.reset(seed=0)
    expected = [m.iteration_time(0, 0, (prompt,), (0,)) for m in vllm.time_models]
    np.testing.assert_allclose(column(obs, "fluid_ttft"), expected, rtol=1e-5)


def test_fluid_ttft_reads_no_replica_so_staleness_leaves_it_unchanged():
    """The column is the router's own record: the same decisions give the same column with a
    view one second old (and the other columns do differ)."""
    fresh, stale = (VidurRoutingEnv(num_requests=60, obs_refresh_ms=ms) for ms in (0, 1000))
    fresh_obs, stale_obs = play(fresh), play(stale)
    assert [a for _, _, a, _ in fresh_obs] == [a for _, _, a, _ in stale_obs]
    for (a, *_), (b, *_) in zip(fresh_obs, stale_obs):
        np.testing.assert_array_equal(a[:, COLUMN["fluid_ttft"]], b[:, COLUMN["fluid_ttft"]])
    assert any((a[:, COLUMN["waiting"]] != b[:, COLUMN["waiting"]]).any() for (a, *_), (b, *_) in zip(fresh_obs, stale_obs))
    assert any(a[:, COLUMN["fluid_ttft"]].max() > 0.5 for a, *_ in fresh_obs)  # some backlog builds up


class HeldBlocks:
    """A cache view that reports a fixed number of cached prompt blocks at each replica."""

    def __init__(self, blocks):
        self.blocks = blocks

    def matches(self, keys):
        return list(self.blocks) if keys else [0] * len(self.blocks)

    def cached(self, replica):
        return self.blocks[replica]


def test_fluid_ttft_counts_only_the_prompt_past_its_cached_prefix():
    """1000 prompt tokens at 1e-4 s each: 40 cached blocks (640 tokens) leave 0.036 s, which is
    also what the backlog keeps; a prompt cached whole still prefills its last token."""
    model = LinearTime()
    costs = ReplicaCosts.from_time_model(model)
    builder = ObservationBuilder([costs] * 3, [100] * 3, max_tokens=4096, cache=HeldBlocks([40, 0, 63]),
                                 prefill_plans=[PrefillPlan(model, None, 0)] * 3)
    builder.snapshot([hand_replica(0, 0, model)] * 3, 0.0)
    obs = builder.build(1000, 10, 0.0, prompt_keys=(1,))
    np.testing.assert_allclose(column(obs, "fluid_ttft"), [0.036, 0.1, 0.0001], rtol=1e-4)
    np.testing.assert_allclose(obs[:, -2], [0.64, 0.0, 1.0], rtol=1e-6)  # prefix_match, as before
    builder.dispatched(0)
    obs = builder.build(1000, 10, 0.0, prompt_keys=())
    np.testing.assert_allclose(column(obs, "fluid_ttft"), [0.036 + 0.1, 0.1, 0.1], rtol=1e-4)
