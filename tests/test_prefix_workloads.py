"""Prefix identity of workloads: Mooncake hash_ids, the CSV block_hashes column, the session
generator's keys (the chained property), the long-context preset and the prefix scenario."""
from __future__ import annotations

import gymnasium
import numpy as np
import pytest

from vidur_env.hardware import get_model, plan_memory
from vidur_env.sessions import KEY_STRIDE, SessionConfig
from vidur_env.simulation import Scenario, run_simulation
from vidur_env.config import ClusterConfig, ConfigError, ReplicaConfig
from vidur_env.env import VidurRoutingEnv
from vidur_env.scenarios import SCENARIOS
from vidur_env.time_model import builtin_time_model
from vidur_env.traces import TraceFormatError, read_trace
from vidur_env.workload import WorkloadConfig, WorkloadConfigError, generate_requests


def replay(path, **kwargs) -> WorkloadConfig:
    return WorkloadConfig(arrival="trace", lengths="trace", trace=str(path), num_requests=None, **kwargs)


@pytest.mark.needs_shared_data
def test_the_real_mooncake_trace_keys_every_full_prompt_block_and_shares_prefixes(shared_data):
    path = shared_data.parent / "traces" / "mooncake_synthetic_trace.jsonl"
    if not path.is_file():
        pytest.skip(f"Mooncake trace not found at {path}")
    workload = WorkloadConfig(arrival="trace", lengths="trace", trace=str(path), num_requests=500, max_tokens=131072)
    requests = generate_requests(workload, np.random.default_rng(0))
    keys = requests.block_hashes
    assert all(len(k) == p // 16 for k, p in zip(keys, requests.num_prefill_tokens))  # outputs are not in hash_ids
    firsts = [k[0] for k in keys if k]
    assert len(set(firsts)) < len(firsts)  # some requests share their first 512 tokens


def test_mooncake_hash_ids_become_32_sixteen_token_keys_each(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 1000, "output_length": 5, "hash_ids": [7, 9]}\n'
                    '{"timestamp": 10, "input_length": 600, "output_length": 5, "hash_ids": [7, 3]}\n'
                    '{"timestamp": 20, "input_length": 600, "output_length": 5}\n')
    requests = generate_requests(replay(path), np.random.default_rng(0))
    first, second, third = requests.block_hashes
    assert len(first) == 1000 // 16 == 62 and first[:32] == tuple(7 * 32 + j for j in range(32))
    assert first[32:] == tuple(9 * 32 + j for j in range(30))
    assert second[:32] == first[:32] and second[32] != first[32] and len(second) == 600 // 16
    assert third is None


def test_a_prompt_cut_to_max_tokens_keeps_only_its_remaining_blocks(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 5000, "output_length": 96, "hash_ids": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}\n')
    requests = generate_requests(replay(path, max_tokens=4096), np.random.default_rng(0))
    assert requests.num_cut == 1 and len(requests.block_hashes[0]) == (4096 - 96) // 16  # the cut prompt's blocks


@pytest.mark.parametrize("value, problem", [('"abc"', "list of integers"), ("[1, -2]", "list of integers"),
                                            ("[1, true]", "list of integers")])
def test_malformed_hash_ids_name_file_line_and_key(tmp_path, value, problem):
    path = tmp_path / "m.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 10, "output_length": 5}\n'
                    f'{{"timestamp": 1, "input_length": 10, "output_length": 5, "hash_ids": {value}}}\n')
    with pytest.raises(TraceFormatError, match=rf"m.jsonl:2: hash_ids: .*{problem}"):
        read_trace(path)


def test_csv_block_hashes_column_is_read_per_row_and_blank_means_none(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens,block_hashes\n"
                    "0,40,10,5 6 7\n0.5,40,10,\n1,33,1,5 6\n")
    requests = generate_requests(replay(path), np.random.default_rng(0))
    assert requests.block_hashes == [(5, 6, 7), None, (5, 6)]


def test_shuffled_trace_rows_keep_their_keys(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens,block_hashes\n"
                    "0,40,10,5 6 7\n0.5,33,1,8 9\n1,20,1,\n")
    requests = generate_requests(WorkloadConfig(lengths="trace", trace=str(path), num_requests=3),
                                 np.random.default_rng(0))
    by_length = dict(zip(requests.num_prefill_tokens.tolist(), requests.block_hashes))
    assert by_length == {40: (5, 6, 7), 33: (8, 9), 20: None}


@pytest.mark.parametrize("cell, problem", [("1 x 3", "expected space-separated integers"), ("1 -3", "keys must be >= 0"),
                                           ("1 2 3 4", "4 keys but the row's 50 tokens fill only 3")])
def test_malformed_csv_block_hashes_name_file_line_and_column(tmp_path, cell, problem):
    path = tmp_path / "t.csv"
    path.write_text(f"arrived_at,num_prefill_tokens,num_decode_tokens,block_hashes\n0,40,10,1\n1,40,10,{cell}\n")
    with pytest.raises(TraceFormatError, match=rf"t.csv:3: block_hashes: {problem}"):
        read_trace(path)


def sessions(num_requests=400, **knobs) -> WorkloadConfig:
    return WorkloadConfig(num_requests=num_requests, sessions=SessionConfig(**knobs), max_tokens=16384)


def test_session_keys_have_the_chained_property_and_cover_prompt_and_answer():
    requests = generate_requests(sessions(), np.random.default_rng(1))
    keys = requests.block_hashes
    for k, p, d in zip(keys, requests.num_prefill_tokens, requests.num_decode_tokens):
        assert len(k) == (p + d) // 16
    # equal key at i => equal key at every j < i (same leading content)
    position = {}
    for k in keys:
        for i, key in enumerate(k):
            assert position.setdefault(key, (i, k[:i])) == (i, k[:i])
    assert np.all(np.diff(requests.arrived_at) >= 0)


def test_a_sessions_next_turn_extends_the_previous_prompt_and_answer():
    requests = generate_requests(sessions(num_requests=300, think_time_s=1.0), np.random.default_rng(2))
    by_stream = {}
    for rid, k in enumerate(requests.block_hashes):
        by_stream.setdefault(k[-1] // KEY_STRIDE, []).append(rid)
    turns = [rids for rids in by_stream.values() if len(rids) > 1]
    assert turns, "some session has two turns"
    for rids in turns:
        for a, b in zip(rids, rids[1:]):
            prev = requests.block_hashes[a]
            assert requests.num_prefill_tokens[b] > requests.num_prefill_tokens[a] + requests.num_decode_tokens[a]
            assert requests.block_hashes[b][: len(prev)] == prev  # the next turn can hit the whole answer


def test_system_prompts_are_shared_across_sessions_with_zipf_popularity():
    config = SessionConfig()
    requests = generate_requests(sessions(num_requests=2000, mean_turns=1.0), np.random.default_rng(3))
    firsts = np.array([k[0] // KEY_STRIDE for k in requests.block_hashes])
    counts = np.bincount(firsts, minlength=config.num_system_prompts)
    assert counts[0] > counts[3] > counts[15] > 0
    assert abs(counts[0] / len(firsts) - config.popularity()[0]) < 0.05
    shared = config.system_prompt_tokens // 16
    a, b = [k for k, s in zip(requests.block_hashes, firsts) if s == 0][:2]
    assert a[:shared] == b[:shared] and a[shared] != b[shared]


def test_session_workload_is_reproducible_and_validated():
    one = generate_requests(sessions(), np.random.default_rng(5))
    two = generate_requests(sessions(), np.random.default_rng(5))
    assert one.block_hashes == two.block_hashes and np.array_equal(one.arrived_at, two.arrived_at)
    with pytest.raises(WorkloadConfigError, match="sessions.zipf_alpha"):
        sessions(zipf_alpha=-1).validate()
    with pytest.raises(WorkloadConfigError, match="sessions need arrival"):
        WorkloadConfig(arrival="gamma", sessions=SessionConfig()).validate()
    with pytest.raises(WorkloadConfigError, match="sessions.system_prompt_tokens"):
        WorkloadConfig(sessions=SessionConfig(system_prompt_tokens=5000), max_tokens=4096).validate()


def test_long_context_preset_has_llama3_shapes_and_runs_100k_token_prompts():
    model = get_model("llama-3.1-8b")
    base = get_model("llama-3-8b")
    assert model.max_context == 131072 and model.params_per_layer(1) == base.params_per_layer(1)
    assert plan_memory(model, "a100", 1, max_tokens=131072).num_blocks >= 131072 // 16
    times = builtin_time_model(model, "a100", 1)
    assert times.iteration_time(0, 0, (4096,), (0,)) == builtin_time_model(base, "a100", 1).iteration_time(0, 0, (4096,), (0,))
    chunks = [times.iteration_time(0, 0, (512,), (kv,)) for kv in (0, 32768, 65536, 99328)]
    assert all(np.isfinite(chunks)) and chunks == sorted(chunks)
    workload = WorkloadConfig(num_requests=3, lengths="fixed", prefill_tokens=100_000, decode_tokens=8,
                              max_tokens=131072, arrival="static")
    result = run_simulation(Scenario(ClusterConfig(num_replicas=1, replica=ReplicaConfig(model="llama-3.1-8b")),
                                     workload, load=None))
    assert result.metrics["requests_cut_to_max_tokens"] == 0 and result.metrics["num_requests"] == 3


def test_an_unknown_scenario_name_lists_the_registered_ones():
    with pytest.raises(ConfigError, match=f"scenario: unknown name 'prefixes'; choose from {', '.join(SCENARIOS)}$"):
        VidurRoutingEnv(scenario="prefixes")


def test_the_prefix_scenario_runs_through_gymnasium_make():
    env = gymnasium.make("vidur_env:VidurRouting-v0", scenario="prefix", num_requests=40)
    obs, _ = env.reset(seed=0)
    assert env.unwrapped.workload.sessions == SessionConfig() and env.unwrapped.cluster.replica.model == "llama-3.1-8b"
    assert env.unwrapped.simulator.table.block_hashes[0] is not None
    done = False
    while not done:
        obs, _, terminated, truncated, info = env.step(0)
        done = terminated or truncated
    assert info["metrics"]["num_requests"] == 40
