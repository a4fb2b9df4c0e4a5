"""Model/device registries and Vidur's memory planner."""
from __future__ import annotations

import inspect
from dataclasses import fields

import pytest

from vidur_env.cluster import ClusterSimulator
from vidur_env.config import ReplicaConfig
from vidur_env.hardware import DEVICES, MODELS, ModelSpec, UnknownSpecError, get_device, get_model, plan_memory
from vidur_env.schedulers import SchedulerLimits
from vidur_env.workload import WorkloadConfig


@pytest.mark.parametrize(
    ("model", "tp", "slots", "blocks"),
    [
        ("meta-llama/Llama-2-7b-hf", 1, 29, 7424),  # VIDUR_SEMANTICS.md
        ("meta-llama/Meta-Llama-3-8B", 1, 118, 30208),
        ("meta-llama/Llama-2-70b-hf", 4, 128, 32768),
    ],
)
def test_memory_plan_matches_vidur(model: str, tp: int, slots: int, blocks: int) -> None:
    plan = plan_memory(model, "a100", tp, max_tokens=4096)
    assert plan.max_batch_size == slots
    assert plan.num_blocks == blocks
    assert plan.max_kv_tokens == blocks * 16


def test_llama2_7b_plan_details() -> None:
    plan = plan_memory("llama-2-7b", "a100", 1)
    assert plan.max_kv_tokens == 118_784
    assert plan.kv_bytes_per_token == 2 * 2 * 128 * 32 * 32  # K and V, fp16, head_dim, kv heads, layers
    assert plan.request_slots == 29


def test_batch_size_cap_limits_batch_but_not_blocks() -> None:
    """Vidur sizes the cache by the uncapped slots and caps only the batch size."""
    plan = plan_memory("llama-2-70b", "a100", 8)
    assert plan.max_batch_size == 128
    assert plan.request_slots > 128
    assert plan.num_blocks == 256 * plan.request_slots
    assert plan_memory("llama-2-7b", "a100", 1, batch_size_cap=16).max_batch_size == 16


def test_pipeline_stages_follow_vidur_main() -> None:
    """Weights per stage shrink, KV per request still spans all layers, slots = batch * stages."""
    plan = plan_memory("llama-2-7b", "a100", 1, pipeline_stages=2)
    assert (plan.max_batch_size, plan.request_slots, plan.num_blocks) == (32, 64, 16384)


def test_max_tokens_changes_slots() -> None:
    assert plan_memory("llama-2-7b", "a100", 1, max_tokens=2048).max_batch_size == 59  # floor(64.36 GB / 1.07 GB)


def test_model_that_does_not_fit_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no room"):
        plan_memory("llama-2-70b", "a100", 1)


def test_bad_parallelism_names_the_field() -> None:
    with pytest.raises(ValueError, match="num_q_heads 32 is not divisible by tp=3"):
        plan_memory("llama-2-7b", "a100", 3)
    with pytest.raises(ValueError, match="num_layers 32 is not divisible by pipeline_stages=3"):
        plan_memory("llama-2-7b", "a100", 1, pipeline_stages=3)


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("llama-2-7b", "meta-llama/Llama-2-7b-hf"),
        ("LLaMA-2-7B", "meta-llama/Llama-2-7b-hf"),
        ("meta-llama/llama-2-70b-hf", "meta-llama/Llama-2-70b-hf"),
        ("llama-3-8b", "meta-llama/Meta-Llama-3-8B"),
        ("meta-llama/Llama-3-8B", "meta-llama/Meta-Llama-3-8B"),
        ("Llama-3-70B", "meta-llama/Meta-Llama-3-70B"),
        ("Meta-Llama-3-70B", "meta-llama/Meta-Llama-3-70B"),
        ("llama-2-7b-hf", "meta-llama/Llama-2-7b-hf"),
    ],
)
def test_model_aliases(alias: str, name: str) -> None:
    assert get_model(alias) is MODELS[name]


def test_unknown_names_list_valid_ones() -> None:
    with pytest.raises(UnknownSpecError, match="llama-2-7b") as model_error:
        get_model("gpt-5")
    assert "gpt-5" in str(model_error.value)
    with pytest.raises(UnknownSpecError, match="a100, h100"):
        get_device("tpu")
    assert isinstance(model_error.value, ValueError)


def test_specs_pass_through_and_devices() -> None:
    spec = MODELS["meta-llama/Llama-2-7b-hf"]
    assert get_model(spec) is spec
    assert get_device("A100") is DEVICES["a100"]
    assert DEVICES["h100"].network == "h100_dgx"
    assert DEVICES["a100"].memory_gb == 80


def test_model_spec_derived_sizes() -> None:
    llama3 = get_model("llama-3-8b")
    assert llama3.head_dim == 128
    assert llama3.is_gqa and not get_model("llama-2-7b").is_gqa
    assert get_model("llama-2-70b").kv_heads_per_worker(16) == 1  # KV heads replicate beyond their count


def test_model_spec_validation() -> None:
    with pytest.raises(ValueError, match="hidden_size 100 is not a multiple of num_q_heads 3"):
        ModelSpec("bad", 2, 100, 3, 3, 10)
    with pytest.raises(ValueError, match="num_layers must be a positive int"):
        ModelSpec("bad", 0, 64, 4, 4, 10)


@pytest.mark.parametrize(("model", "context"), [("llama-2-7b", 4096), ("llama-2-70b", 4096),
                                                 ("llama-3-8b", 8192), ("llama-3-70b", 8192)])
def test_models_know_their_context_length(model: str, context: int) -> None:
    assert get_model(model).max_context == context


def test_every_layer_defaults_to_the_same_request_and_replica_limits() -> None:
    """The workload's cut, the planner's request slot, Orca's reservation and the cluster's
    request check agree on max_tokens, and a replica config's batching knobs on the
    scheduler's, when nobody sets them (each default is written once)."""
    planner = inspect.signature(plan_memory).parameters
    limits = SchedulerLimits(num_blocks=1, max_batch_size=1)
    assert {WorkloadConfig().max_tokens, planner["max_tokens"].default, limits.max_tokens,
            inspect.signature(ClusterSimulator).parameters["max_tokens"].default} == {4096}
    replica = ReplicaConfig()
    shared = {f.name for f in fields(SchedulerLimits)} & {f.name for f in fields(ReplicaConfig)}
    assert shared == {"batch_size_cap", "chunk_size", "max_tokens_in_batch", "vllm_batch_rule", "num_blocks",
                      "watermark_fraction", "prefix_caching"}
    assert all(getattr(replica, name) == getattr(limits, name) for name in shared - {"num_blocks"})
    assert (replica.batch_size_cap, replica.memory_margin_fraction) == (
        planner["batch_size_cap"].default, planner["memory_margin_fraction"].default)
