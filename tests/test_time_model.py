"""Execution-time model: Vidur's keying and composition, the builtin fit, the profiled loader."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

from vidur_env.cli import build_parser, scenario_from_args
from vidur_env.cli import main as cli_main
from vidur_env.cluster import build_time_models
from vidur_env.config import ClusterConfig, ConfigError
from vidur_env.hardware import DeviceSpec, ModelSpec, get_device, get_model
from vidur_env.simulation import Scenario, run_simulation
from vidur_env.time_model import (
    ExecutionTimeModel,
    OutOfGridError,
    ProfileDataError,
    TimeModelError,
    VidurOverheads,
    builtin_time_model,
    ForestTimeModel,
    ProfiledTimeModel,
    forest_time_model,
    profiled_time_model,
)
from vidur_env.time_model import forest_table
from vidur_env.time_model.forest_table import ForestTable
from vidur_env.workload import WorkloadConfig

# ----------------------------------------------------------------------------------------- keying


class RecordingModel(ExecutionTimeModel):
    """Constant per-layer lookups (linear 1, all-reduce 0.5, decode 2, prefill 4 ms) that log their keys."""

    def __init__(self, model: str = "llama-2-7b", tp: int = 1, **kwargs) -> None:
        super().__init__(get_model(model), get_device("a100"), tp, **kwargs)
        self.calls: list[tuple] = []

    def linear_ms(self, tokens: int) -> float:
        self.calls.append(("linear", tokens))
        return 1.0

    def all_reduce_ms(self, tokens: int) -> float:
        self.calls.append(("all_reduce", tokens))
        return 0.5

    def decode_attention_ms(self, batch_size: int, kv: int) -> float:
        self.calls.append(("decode", batch_size, kv))
        return 2.0

    def prefill_attention_ms(self, kv: int, chunk: int) -> float:
        self.calls.append(("prefill", kv, chunk))
        return 4.0

    def describe(self) -> str:
        return "recording"


def per_layer(seconds: float, layers: int = 32) -> float:
    """Back from seconds per iteration to ms per layer."""
    return seconds * 1000 / layers


def test_decode_keys_round_tokens_to_8_and_mean_kv_up_to_64() -> None:
    model = RecordingModel()
    seconds = model.iteration_time(5, 5 * 100, (), ())
    assert model.calls == [("linear", 8), ("decode", 5, 128)]
    assert per_layer(seconds) == pytest.approx(1.0 + 2.0)  # MHA model: no batching overhead


def test_decode_mean_kv_is_floored_before_rounding_up() -> None:
    model = RecordingModel()
    model.iteration_time(3, 3 * 64 + 2, (), ())  # mean 64.67 -> 64 -> 64
    model.iteration_time(3, 3 * 64 + 3, (), ())  # mean 65 -> 128
    assert [c for c in model.calls if c[0] == "decode"] == [("decode", 3, 64), ("decode", 3, 128)]


def test_memo_reuses_the_rounded_key() -> None:
    model = RecordingModel()
    first = model.iteration_time(4, 4 * 70, (), ())
    calls = len(model.calls)
    assert model.iteration_time(4, 4 * 100, (), ()) == first  # mean 100 also rounds to 128
    assert len(model.calls) == calls


def test_vidur_prefills_become_one_equivalent_prefill() -> None:
    model = RecordingModel()
    seconds = model.iteration_time(2, 200, (300, 100), (0, 70))
    # T = 402 -> 408; decode mean 100 -> 128; prefill KV 0 + (70 -> 128); chunk round(sqrt(300^2 + 100^2)) = 316
    assert sorted(model.calls) == [("decode", 2, 128), ("linear", 408), ("prefill", 128, 316)]
    assert per_layer(seconds) == pytest.approx(1.0 + 2.0 + 4.0)


def test_pypi_keying_looks_up_each_prefill_with_kv_including_its_chunk() -> None:
    model = RecordingModel(keying="vidur_pypi")
    seconds = model.iteration_time(2, 200, (300, 100), (0, 70))
    # decode KV = mean(processed + 1) = 101 -> 256;
    # prefill KV = processed + chunk, up to a multiple of 256; chunk up to a multiple of 32
    assert sorted(model.calls) == [("decode", 2, 256), ("linear", 408), ("prefill", 256, 128), ("prefill", 512, 320)]
    assert per_layer(seconds) == pytest.approx(1.0 + 2.0 + 4.0 + 4.0)
    assert model.kv_granularity == 256
    assert RecordingModel(keying="vidur_pypi", kv_granularity=64).kv_granularity == 64


def test_pypi_treats_a_one_token_chunk_as_a_decode() -> None:
    pypi, main = RecordingModel(keying="vidur_pypi"), RecordingModel()
    pypi.iteration_time(1, 100, (1,), (50,))
    main.iteration_time(1, 100, (1,), (50,))
    assert pypi.calls == [("linear", 8), ("decode", 2, 256)]  # mean((100 + 1) + (50 + 1)) = 76
    assert sorted(main.calls) == [("decode", 1, 128), ("linear", 8), ("prefill", 64, 1)]


def test_gqa_overhead_only_with_more_than_one_request_in_that_part() -> None:
    gqa = RecordingModel("llama-3-8b")
    assert per_layer(gqa.iteration_time(1, 100, (), ())) == pytest.approx(1.0 + 2.0)
    assert per_layer(gqa.iteration_time(2, 200, (), ())) == pytest.approx(1.0 + 2.0 * 1.1)
    assert per_layer(gqa.iteration_time(0, 0, (64,), (0,))) == pytest.approx(1.0 + 4.0)
    assert per_layer(gqa.iteration_time(2, 200, (300, 100), (0, 70))) == pytest.approx(1.0 + 2.2 + 4.0 * 1.1)
    pypi = RecordingModel("llama-3-8b", keying="vidur_pypi")  # the PyPI build has no prefill overhead
    assert per_layer(pypi.iteration_time(2, 200, (300, 100), (0, 70))) == pytest.approx(1.0 + 2.2 + 4.0 + 4.0)
    no_overhead = RecordingModel("llama-3-8b", overheads=VidurOverheads(attention_decode_batching_overhead_fraction=0))
    assert per_layer(no_overhead.iteration_time(2, 200, (), ())) == pytest.approx(3.0)


def test_tensor_parallel_adds_two_all_reduces_with_nccl_overheads() -> None:
    model = RecordingModel("llama-2-70b", tp=4)
    seconds = model.iteration_time(1, 100, (), ())
    assert ("all_reduce", 8) in model.calls
    assert per_layer(seconds, 80) == pytest.approx(1.0 + 2.0 + 2 * (0.5 + 0.02))
    skewed = RecordingModel("llama-2-70b", tp=4, overheads=VidurOverheads(nccl_cpu_skew_overhead_per_device_ms=0.01))
    extra = 2 * 0.01 * 4**1.25
    assert per_layer(skewed.iteration_time(1, 100, (), ()), 80) == pytest.approx(1.0 + 2.0 + 2 * 0.52 + extra)


def test_pipeline_stage_counts_its_layers_only() -> None:
    whole, half = RecordingModel(), RecordingModel(pipeline_stages=2)
    assert half.iteration_time(1, 10, (), ()) == pytest.approx(whole.iteration_time(1, 10, (), ()) / 2)


def test_bad_batches_and_options_are_clear_errors() -> None:
    model = RecordingModel()
    with pytest.raises(TimeModelError, match="empty batch"):
        model.iteration_time(0, 0, (), ())
    with pytest.raises(TimeModelError, match="prefill_chunks has 2 entries but prefill_kv has 1"):
        model.iteration_time(0, 0, (10, 20), (0,))
    with pytest.raises(TimeModelError, match="positive"):
        model.iteration_time(0, 0, (0,), (0,))
    with pytest.raises(TimeModelError, match="unknown keying 'orca'; valid: vidur, vidur_pypi"):
        RecordingModel(keying="orca")
    assert isinstance(TimeModelError("x"), ValueError)


# ----------------------------------------------------------------------------------------- builtin

LINEAR_POINTS = [  # CALIBRATION.md, real profiling, ms per layer
    ("llama-2-7b", "a100", 1, {1: 0.290, 8: 0.283, 32: 0.298, 64: 0.303, 128: 0.383, 256: 0.557,
                               512: 1.042, 1024: 2.123, 2048: 4.172, 4096: 8.171}),
    ("llama-2-7b", "h100", 1, {1: 0.175, 128: 0.199, 512: 0.375, 1024: 0.657, 4096: 2.592}),
    ("llama-3-8b", "a100", 1, {1: 0.303, 1024: 2.348, 4096: 8.529}),
    ("llama-2-70b", "a100", 4, {1: 0.311, 1024: 2.297, 4096: 7.912}),
    ("llama-2-70b", "a100", 8, {1: 0.177, 4096: 4.211}),
]


@pytest.mark.parametrize(("model", "device", "tp", "points"), LINEAR_POINTS)
def test_builtin_linear_ops_hit_calibration_points(model: str, device: str, tp: int, points: dict) -> None:
    time_model = builtin_time_model(model, device, tp)
    for tokens, ms in points.items():
        assert time_model.linear_ms(tokens) == pytest.approx(ms, rel=0.03), tokens


@pytest.mark.parametrize(("tp", "points"), [(2, {512: 0.063, 4096: 0.247}), (4, {512: 0.085, 4096: 0.319}),
                                            (8, {512: 0.099, 4096: 0.411})])
def test_builtin_all_reduce_near_calibration(tp: int, points: dict) -> None:
    time_model = builtin_time_model("llama-2-7b", "a100", tp)  # hidden 4096: CALIBRATION's token sizes
    for tokens, ms in points.items():
        assert time_model.all_reduce_ms(tokens) == pytest.approx(ms, rel=0.05)


@pytest.mark.parametrize("keying", ["vidur", "vidur_pypi"])
def test_builtin_whole_iteration_sanity_targets(keying: str) -> None:
    """CALIBRATION.md's derived Llama-2-7B / A100 / TP1 iteration times, within 10%."""
    time_model = builtin_time_model("llama-2-7b", "a100", 1, keying=keying)
    assert time_model.iteration_time(1, 100, (), ()) * 1e3 == pytest.approx(9.6, rel=0.1)
    assert time_model.iteration_time(32, 32 * 1000, (), ()) * 1e3 == pytest.approx(19, rel=0.1)
    assert time_model.iteration_time(0, 0, (512,), (0,)) * 1e3 == pytest.approx(37, rel=0.1)
    if keying == "vidur":  # the PyPI build keys prefill KV with the chunk included: ~20% dearer here
        assert time_model.iteration_time(0, 0, (4096,), (0,)) * 1e3 == pytest.approx(340, rel=0.1)


@pytest.mark.parametrize("device", ["a100", "h100"])
@pytest.mark.parametrize(
    ("model", "tp"), [("llama-2-7b", 1), ("llama-3-8b", 1), ("llama-2-70b", 4), ("llama-2-70b", 8)]
)
def test_builtin_presets_exist_and_describe_themselves(model: str, tp: int, device: str) -> None:
    time_model = builtin_time_model(model, device, tp)
    text = time_model.describe()
    for part in ("builtin", get_model(model).name, device, f"TP{tp}", "keying=vidur"):
        assert part in text
    assert ("derived" in text) == (model == "llama-3-8b" and device == "h100")
    prefill, decode = time_model.iteration_time(0, 0, (512,), (0,)), time_model.iteration_time(16, 16 * 500, (), ())
    assert 0 < decode < prefill


def test_h100_is_faster_than_a100() -> None:
    for model, tp in (("llama-2-7b", 1), ("llama-3-8b", 1), ("llama-2-70b", 8)):
        a100, h100 = builtin_time_model(model, "a100", tp), builtin_time_model(model, "h100", tp)
        for batch in ((32, 32 * 1000, (), ()), (8, 8 * 500, (400,), (0,))):
            assert h100.iteration_time(*batch) < a100.iteration_time(*batch)


def test_decode_attention_scales_with_kv_bytes() -> None:
    """Llama-3-8B keeps 8 KV heads, a quarter of Llama-2-7B's KV bytes: a quarter of the bandwidth term."""
    mha, gqa = builtin_time_model("llama-2-7b", "a100", 1), builtin_time_model("llama-3-8b", "a100", 1)
    growth = [m.decode_attention_ms(128, 2048) - m.decode_attention_ms(64, 2048) for m in (mha, gqa)]
    assert growth[1] == pytest.approx(growth[0] / 4)


def test_builtin_without_preset_lists_what_exists() -> None:
    with pytest.raises(TimeModelError, match="no builtin linear-op coefficients .* TP16; available: .*tp8"):
        builtin_time_model("llama-2-7b", "a100", 16)


def test_builtin_speed_path_is_memoised() -> None:
    time_model = builtin_time_model("llama-2-7b", "a100", 1)
    first = time_model.iteration_time(32, 32 * 1000, (480,), (1000,))
    assert time_model.iteration_time(32, 32 * 1010, (480,), (1020,)) == first  # both KVs round to 1024


# ----------------------------------------------------------------------------------------- profiled (fixtures)

TINY = ModelSpec("test/tiny", num_layers=2, hidden_size=64, num_q_heads=4, num_kv_heads=4, ffn_size=128)
GPU = DeviceSpec("gpu", memory_gb=80, network="net", hbm_tb_s=1.0)
OPS = ("emb", "input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj", "post_attention_layernorm",
       "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")
LINEAR_OPS = 9  # every op but the embedding


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def mlp_row(tokens: int, op_ms: float, tp: int = 1, n_embd: int = 64) -> dict:
    row = {f"time_stats.{op}.median": op_ms for op in OPS}
    row.update(n_head=4, n_kv_head=4, n_embd=n_embd, n_expanded_embd=128, vocab_size=100, use_gated_mlp=True,
               num_tokens=tokens, num_tensor_parallel_workers=tp)
    return row


def attention_row(batch: int, chunk: int, kv: int, ms: float, tp: int = 1) -> dict:
    return {
        "batch_size": batch, "prefill_chunk_size": chunk, "kv_cache_size": kv, "is_prefill": chunk > 0,
        "time_stats.attn_decode.median": "" if chunk else ms, "time_stats.attn_prefill.median": ms if chunk else "",
        "n_embd": 64, "n_q_head": 4, "n_kv_head": 4, "block_size": 16, "num_tensor_parallel_workers": tp,
    }


def decode_ms(batch: int, kv: int) -> float:
    return batch * kv / 1000


def prefill_ms(chunk: int, kv: int) -> float:
    return chunk * (kv + chunk) / 1e5


def write_profiles(root: Path, drop_mlp_column: str | None = None) -> Path:
    """A tiny profile set in Vidur's layout, with rows for other shapes/TPs that must be filtered out."""
    mlp = [mlp_row(t, t / 1000) for t in (8, 32)] + [mlp_row(16, 0.016), mlp_row(16, 0.018)]
    mlp += [mlp_row(t, t / 2000, tp=2) for t in (8, 16, 32)] + [mlp_row(8, 9.9, n_embd=128)]
    if drop_mlp_column:
        mlp = [{k: v for k, v in row.items() if k != drop_mlp_column} for row in mlp]
    write_csv(root / "compute" / "gpu" / "test" / "tiny" / "mlp.csv", mlp)
    attention = []
    for tp in (1, 2):
        attention += [attention_row(b, 0, kv, decode_ms(b, kv), tp) for b in (1, 2, 4) for kv in (64, 128, 256)]
        attention += [attention_row(1, c, kv, prefill_ms(c, kv), tp) for c in (64, 128) for kv in (0, 128)]
    write_csv(root / "compute" / "gpu" / "test" / "tiny" / "attention.csv", attention)
    network = [
        {"": i, "time_stats.all_reduce.median": ms, "rank": 0, "num_workers": 2, "size": tokens * 2 * 64,
         "collective": "all_reduce", "devices_per_node": per_node, "max_devices_per_node": 8}
        for i, (tokens, ms, per_node) in enumerate([(8, 0.018, 2), (64, 0.074, 2), (8, 5.0, 1), (64, 5.0, 1)])
    ]
    write_csv(root / "network" / "net" / "all_reduce.csv", network)
    return root


def test_profiled_interpolates_linear_ops_and_averages_repeats(tmp_path: Path) -> None:
    model = profiled_time_model(write_profiles(tmp_path), TINY, GPU, 1)
    assert model.linear_ms(8) == pytest.approx(LINEAR_OPS * 0.008)
    assert model.linear_ms(16) == pytest.approx(LINEAR_OPS * 0.017)  # mean of the two repeats
    assert model.linear_ms(24) == pytest.approx(LINEAR_OPS * (0.017 + 0.032) / 2)


def test_profiled_attention_is_bilinear(tmp_path: Path) -> None:
    model = profiled_time_model(write_profiles(tmp_path), TINY, GPU, 1)
    assert model.decode_attention_ms(3, 192) == pytest.approx(decode_ms(3, 192))  # b*kv is bilinear
    expected = (prefill_ms(64, 64) + prefill_ms(128, 64)) / 2
    assert model.prefill_attention_ms(64, 96) == pytest.approx(expected)


def test_profiled_iteration_composes_per_layer_times(tmp_path: Path) -> None:
    model = profiled_time_model(write_profiles(tmp_path), TINY, GPU, 1)
    assert model.iteration_time(2, 2 * 100, (), ()) == pytest.approx(
        (LINEAR_OPS * 0.008 + decode_ms(2, 128)) * TINY.num_layers / 1000
    )
    assert "profiled" in model.describe() and "test/tiny on gpu, TP1" in model.describe()


def test_profiled_filters_tp_and_adds_all_reduce(tmp_path: Path) -> None:
    model = profiled_time_model(write_profiles(tmp_path), TINY, GPU, 2)
    assert model.linear_ms(16) == pytest.approx(LINEAR_OPS * 0.008)
    assert model.all_reduce_ms(8) == pytest.approx(0.018)  # the devices_per_node=1 rows are ignored
    assert model.all_reduce_ms(36) == pytest.approx((0.018 + 0.074) / 2)
    expected = LINEAR_OPS * 0.004 + decode_ms(1, 64) + 2 * (0.018 + 0.02)
    assert model.iteration_time(1, 50, (), ()) == pytest.approx(expected * TINY.num_layers / 1000)


def test_profiled_out_of_grid_names_op_key_and_range(tmp_path: Path) -> None:
    model = profiled_time_model(write_profiles(tmp_path), TINY, GPU, 1, extrapolate=False)
    decode = r"attn_decode kv_cache_size at batch_size=1 .*320 is outside the profiled range 64\.\.256"
    with pytest.raises(OutOfGridError, match=decode):
        model.iteration_time(1, 300, (), ())
    with pytest.raises(OutOfGridError, match=r"mlp num_tokens .*40 is outside the profiled range 8\.\.32"):
        model.iteration_time(40, 40 * 100, (), ())
    prefill = r"attn_prefill prefill_chunk_size .*20 is outside .*64\.\.128.*extrapolate=True"
    with pytest.raises(OutOfGridError, match=prefill):
        model.iteration_time(0, 0, (20,), (0,))


def test_profiled_extrapolation_clamps_below_and_extends_above(tmp_path: Path) -> None:
    model = profiled_time_model(write_profiles(tmp_path), TINY, GPU, 1, extrapolate=True, above_grid="linear")
    assert model.decode_attention_ms(1, 320) == pytest.approx(decode_ms(1, 320))  # linear continuation
    assert model.decode_attention_ms(8, 64) == pytest.approx(decode_ms(8, 64))  # row axis continues too
    assert model.prefill_attention_ms(0, 20) == pytest.approx(prefill_ms(64, 0))  # clamped to the smallest chunk
    assert model.linear_ms(40) == pytest.approx(LINEAR_OPS * (0.032 + (0.032 - 0.017) / 16 * 8))


def test_profiled_default_is_flat_above_the_grid_as_vidurs_random_forests(tmp_path: Path) -> None:
    """A random forest predicts the boundary leaf's value beyond its data; so does the default."""
    model = profiled_time_model(write_profiles(tmp_path), TINY, GPU, 1)
    assert model.decode_attention_ms(1, 320) == pytest.approx(decode_ms(1, 256))  # last KV of the row
    assert model.decode_attention_ms(8, 64) == pytest.approx(decode_ms(4, 64))  # last batch row
    assert model.prefill_attention_ms(4096, 256) == pytest.approx(prefill_ms(128, 128))  # both axes
    assert model.linear_ms(40) == pytest.approx(LINEAR_OPS * 0.032)
    assert model.prefill_attention_ms(0, 20) == pytest.approx(prefill_ms(64, 0))  # below: clamped as before
    assert model.out_of_grid_lookups == 5
    assert "clamped below and clamp above" in model.describe()


def test_profiled_rejects_an_unknown_above_grid_rule(tmp_path: Path) -> None:
    with pytest.raises(TimeModelError, match="above_grid must be one of linear, clamp, got 'cubic'"):
        profiled_time_model(write_profiles(tmp_path), TINY, GPU, 1, above_grid="cubic")


def test_profiled_missing_column_names_file_and_column(tmp_path: Path) -> None:
    write_profiles(tmp_path, drop_mlp_column="time_stats.mlp_up_proj.median")
    with pytest.raises(ProfileDataError, match=r"mlp\.csv: missing column 'time_stats\.mlp_up_proj\.median'"):
        profiled_time_model(tmp_path, TINY, GPU, 1)


def test_profiled_optional_ops_count_as_zero_when_absent(tmp_path: Path) -> None:
    write_profiles(tmp_path, drop_mlp_column="time_stats.add.median")
    assert profiled_time_model(tmp_path, TINY, GPU, 1).linear_ms(8) == pytest.approx((LINEAR_OPS - 1) * 0.008)


def test_profiled_missing_file_and_rows_are_clear(tmp_path: Path) -> None:
    write_profiles(tmp_path)
    (tmp_path / "network" / "net" / "all_reduce.csv").unlink()
    with pytest.raises(ProfileDataError, match=r"profiling file not found: .*network/net/all_reduce\.csv"):
        profiled_time_model(tmp_path, TINY, GPU, 2)
    no_rows = r"no rows with .*num_tensor_parallel_workers=4 .*present: .*num_tensor_parallel_workers in \[1, 2\]"
    with pytest.raises(ProfileDataError, match=no_rows):
        profiled_time_model(tmp_path, TINY, GPU, 4)


def test_profiled_extrapolates_by_default_and_counts_each_off_grid_lookup(tmp_path: Path) -> None:
    model = profiled_time_model(write_profiles(tmp_path), TINY, GPU, 1)
    assert model.out_of_grid_lookups == 0
    model.iteration_time(2, 2 * 100, (), ())  # inside the grid
    assert model.out_of_grid_lookups == 0
    model.iteration_time(1, 300, (), ())  # decode KV 320 > 256
    model.iteration_time(0, 0, (20,), (0,))  # prefill chunk 20 < 64
    assert model.out_of_grid_lookups == 2
    model.iteration_time(1, 300, (), ())  # memoised: no new lookup
    model.decode_attention_ms(8, 512)  # off both axes: still one lookup
    assert model.out_of_grid_lookups == 3
    assert builtin_time_model("llama-2-7b", "a100", 1).out_of_grid_lookups == 0


@pytest.mark.parametrize("bad", ["-0.5", "0", "nan", "NaN", "inf"])
@pytest.mark.parametrize("column, profile", [
    ("time_stats.mlp_up_proj.median", "mlp"),
    ("time_stats.add.median", "mlp"),
    ("time_stats.attn_decode.median", "attention"),
])
def test_profiled_rejects_non_positive_or_nan_times_naming_file_line_and_column(
        tmp_path: Path, bad: str, column: str, profile: str) -> None:
    write_profiles(tmp_path)
    path = tmp_path / "compute" / "gpu" / "test" / "tiny" / f"{profile}.csv"
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows[1][column] = bad
    write_csv(path, rows)
    expected = rf"{profile}\.csv, line 3, column '{column}': a time must be a finite number > 0 ms, got '{bad}'"
    with pytest.raises(ProfileDataError, match=expected):
        profiled_time_model(tmp_path, TINY, GPU, 1)


def test_profiled_rejects_bad_all_reduce_times(tmp_path: Path) -> None:
    write_profiles(tmp_path)
    path = tmp_path / "network" / "net" / "all_reduce.csv"
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows[0]["time_stats.all_reduce.median"] = "-1"
    write_csv(path, rows)
    with pytest.raises(ProfileDataError, match=r"all_reduce\.csv, line 2, column 'time_stats\.all_reduce\.median'"):
        profiled_time_model(tmp_path, TINY, GPU, 2)


# ----------------------------------------------------------------------------------------- forest


def fitted_forest(features: np.ndarray, target: np.ndarray, seed: int = 0):
    from sklearn.ensemble import RandomForestRegressor

    return RandomForestRegressor(n_estimators=20, random_state=seed).fit(features.astype(np.float32), target)


def test_forest_table_answers_exactly_what_the_forests_predict_inside_and_beyond_their_data() -> None:
    """Summed forests tabulated on their split cells give predict()'s values at every key, including
    float32-rounded keys near 2**24 (prefill attention keys on the squared chunk)."""
    rng = np.random.default_rng(3)
    chunk = rng.integers(1, 4097, size=80)
    features = np.column_stack([rng.integers(0, 4097, size=80), chunk * chunk])
    forests = [fitted_forest(features, rng.random(80), seed) for seed in (0, 1)]
    table = ForestTable(forests, lows=features.min(axis=0), highs=features.max(axis=0), label="test")
    keys = np.column_stack([rng.integers(-100, 9000, size=2000), rng.integers(1, 6000, size=2000) ** 2])
    keys[:20, 1] = 2**24 - np.arange(20)  # where float32 spacing is 1 or 2
    expected = sum(forest.predict(keys.astype(np.float32)) for forest in forests)
    assert [table(int(a), int(b)) for a, b in keys] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert table.outside((-1, 4)) == 0 and table.outside((features[0, 0], 10**9)) == 1 and table.outside(features[0]) is None


def test_forest_table_refuses_a_table_too_large_to_tabulate(monkeypatch) -> None:
    monkeypatch.setattr(forest_table, "MAX_CELLS", 100)
    features = np.arange(40.0).reshape(20, 2)
    with pytest.raises(TimeModelError, match=r"op \(f\): the fitted forests have [\d,]+ constant pieces, more than "
                                             r"the 100 .*profile_fit='interpolate'"):
        ForestTable([fitted_forest(features, features[:, 0] ** 2)], lows=[0, 1], highs=[38, 39], label="op (f)")


def write_stepped_mlp(root: Path) -> Path:
    """Linear ops with a step: 1 ms per op up to 128 tokens, 1.5 ms from 136 on (as Vidur's A100 profile)."""
    write_profiles(root)
    rows = [mlp_row(tokens, 1.0 if tokens <= 128 else 1.5) for tokens in range(8, 257, 8)]
    write_csv(root / "compute" / "gpu" / "test" / "tiny" / "mlp.csv", rows)
    return root


def test_forest_smooths_a_profile_step_that_interpolation_keeps(tmp_path: Path) -> None:
    """Why the forest source is the default: a forest averages trees that saw different bootstrap
    rows, so around a step it predicts between the two levels, as Vidur's do."""
    root = write_stepped_mlp(tmp_path)
    forest = forest_time_model(root, TINY, GPU, 1)
    interpolated = profiled_time_model(root, TINY, GPU, 1)
    assert interpolated.linear_ms(128) == pytest.approx(LINEAR_OPS * 1.0)
    assert interpolated.linear_ms(136) == pytest.approx(LINEAR_OPS * 1.5)
    assert LINEAR_OPS * 1.0 < forest.linear_ms(128) < forest.linear_ms(136) < LINEAR_OPS * 1.5
    assert forest.linear_ms(8) == pytest.approx(LINEAR_OPS * 1.0) and forest.linear_ms(256) == pytest.approx(LINEAR_OPS * 1.5)


def test_forest_model_is_seeded_and_fitted_once_per_files_and_seed(tmp_path: Path) -> None:
    root = write_stepped_mlp(tmp_path)
    first, again = forest_time_model(root, TINY, GPU, 1), forest_time_model(root, TINY, GPU, 1)
    other = forest_time_model(root, TINY, GPU, 1, seed=7)
    assert first._linear is again._linear  # one fit shared by every model built from the same files
    tokens = range(8, 257, 4)
    assert [first.linear_ms(t) for t in tokens] == [again.linear_ms(t) for t in tokens]
    assert [first.linear_ms(t) for t in tokens] != [other.linear_ms(t) for t in tokens]
    assert "forest time model" in first.describe() and "seed 7" in other.describe()


def test_forest_model_counts_lookups_outside_the_profiled_range_or_refuses_them(tmp_path: Path) -> None:
    root = write_profiles(tmp_path)
    strict = forest_time_model(root, TINY, GPU, 1, extrapolate=False)
    strict.iteration_time(2, 2 * 100, (), ())  # inside: batch 2, KV 128, 8 tokens
    with pytest.raises(OutOfGridError, match=r"attn_decode at \(batch_size, kv_cache_size\) \(.*attention\.csv\): "
                                             r"320 is outside the profiled range 64\.\.256.*extrapolate=True"):
        strict.iteration_time(1, 300, (), ())
    lenient = forest_time_model(root, TINY, GPU, 1)
    lenient.iteration_time(1, 300, (), ())
    lenient.iteration_time(1, 300, (), ())  # memoised: no second lookup
    assert lenient.out_of_grid_lookups == 1 and strict.out_of_grid_lookups == 0
    assert lenient.decode_attention_ms(1, 320) == lenient.decode_attention_ms(1, 256)  # flat beyond the data


def test_forest_prefill_feature_follows_the_keyings_build(tmp_path: Path) -> None:
    """Vidur main fits prefill attention on the squared chunk, the PyPI 0.0.26 build on the chunk."""
    root = write_profiles(tmp_path)
    main, pypi = forest_time_model(root, TINY, GPU, 1), forest_time_model(root, TINY, GPU, 1, keying="vidur_pypi")
    assert "prefill_chunk_size**2" in main._prefill.label and "prefill_chunk_size)" in pypi._prefill.label
    for model in (main, pypi):
        assert prefill_ms(64, 0) <= model.prefill_attention_ms(0, 96) <= prefill_ms(128, 128)
        assert model.out_of_grid_lookups == 0


def test_forest_model_reads_tp_rows_and_all_reduce(tmp_path: Path) -> None:
    model = forest_time_model(write_profiles(tmp_path), TINY, GPU, 2)
    assert 0.018 <= model.all_reduce_ms(8) <= 0.074  # the devices_per_node=1 rows (5 ms) are filtered out
    assert LINEAR_OPS * 0.004 <= model.linear_ms(16) <= LINEAR_OPS * 0.016  # TP2 rows only


def test_forest_without_scikit_learn_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.ensemble", None)
    with pytest.raises(TimeModelError, match="needs scikit-learn .* profile_fit='interpolate'"):
        forest_time_model(write_profiles(tmp_path), TINY, GPU, 1, seed=99)


def test_profile_fit_and_forest_seed_are_checked_fields_and_flags(tmp_path: Path, capsys) -> None:
    root = str(write_profiles(tmp_path))
    assert ClusterConfig(time_model="profiled", profiling_dir=root).profile_fit == "forest"
    with pytest.raises(ConfigError, match="cluster.profile_fit: must be one of forest, interpolate, got 'cubic'"):
        ClusterConfig(time_model="profiled", profiling_dir=root, profile_fit="cubic").validate()
    with pytest.raises(ConfigError, match="cluster.forest_seed: must be an integer >= 0, got -1"):
        ClusterConfig(forest_seed=-1).validate()
    args = build_parser().parse_args(["simulate", "--profiling-dir", root, "--profile-fit", "interpolate",
                                      "--forest-seed", "3"])
    cluster = scenario_from_args(args).cluster
    assert (cluster.time_model, cluster.profile_fit, cluster.forest_seed) == ("profiled", "interpolate", 3)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["simulate", "--profiling-dir", root, "--profile-fit", "cubic"])
    assert exit_info.value.code == 2
    assert "--profile-fit: invalid choice: 'cubic'" in capsys.readouterr().err


@pytest.mark.needs_shared_data
@pytest.mark.parametrize("fit, source", [("forest", ForestTimeModel), ("interpolate", ProfiledTimeModel)])
def test_profile_fit_chooses_the_time_source_of_every_replica(shared_data: Path, fit: str, source: type) -> None:
    cluster = ClusterConfig(num_replicas=2, time_model="profiled", profiling_dir=str(shared_data / "profiling"),
                            profile_fit=fit)
    cluster.validate()
    first, second = build_time_models(cluster)
    assert isinstance(first, source) and first is second


# ----------------------------------------------------------------------------------------- profiled (real data)


@pytest.mark.needs_shared_data
def test_profiled_real_data_agrees_with_builtin_fit(shared_data: Path) -> None:
    """Both read the same real mlp.csv: the compact fit stays within a few % of the interpolated profile."""
    profiled = profiled_time_model(shared_data / "profiling", "llama-2-7b", "a100", 1, extrapolate=True)
    builtin = builtin_time_model("llama-2-7b", "a100", 1)
    for tokens in (8, 64, 128, 256, 512, 1024, 2048, 4096):
        assert builtin.linear_ms(tokens) == pytest.approx(profiled.linear_ms(tokens), rel=0.03), tokens
    # decode and whole iterations use the synthetic attention.csv: same ballpark only
    batch = (32, 32 * 1000, (), ())
    assert builtin.iteration_time(*batch) == pytest.approx(profiled.iteration_time(*batch), rel=0.1)



@pytest.mark.parametrize("keying", ["vidur", "vidur_pypi"])
def test_decode_run_time_holds_for_the_span_it_reports(keying):
    model = builtin_time_model("llama-2-7b", "a100", 1, keying=keying)
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 129))
        kv_sum = int(rng.integers(0, 3000)) * n + int(rng.integers(0, n))
        seconds, span = model.decode_run_time(n, kv_sum)
        assert 1 <= span <= model.kv_granularity
        for j in range(span):
            assert model.iteration_time(n, kv_sum + n * j, (), ()) == seconds
        next_mean = (kv_sum + n * span) // n + (1 if keying == "vidur_pypi" else 0)
        assert next_mean % model.kv_granularity == 1 or model.kv_granularity == 1


# ----------------------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("keying, granularity, expected", [
    ("vidur", None, 64), ("vidur_pypi", None, 256), ("vidur_pypi", 64, 64), ("vidur", 128, 128),
])
def test_cluster_kv_granularity_reaches_the_time_models(keying, granularity, expected):
    cluster = ClusterConfig(num_replicas=2, keying=keying, kv_granularity=granularity)
    cluster.validate()
    assert [model.kv_granularity for model in build_time_models(cluster)] == [expected, expected]


@pytest.mark.parametrize("bad", [0, -64, 1.5, True])
def test_cluster_rejects_a_bad_kv_granularity_naming_the_field(bad):
    with pytest.raises(ConfigError, match=rf"cluster\.kv_granularity: must be a positive integer or None, got {bad!r}"):
        ClusterConfig(kv_granularity=bad).validate()


def test_cli_kv_granularity_and_vllm_batch_rule_flags_set_the_scenario(capsys):
    args = build_parser().parse_args(["simulate", "--keying", "vidur_pypi", "--kv-granularity", "64",
                                      "--vllm-batch-rule", "sum"])
    scenario = scenario_from_args(args)
    assert scenario.cluster.kv_granularity == 64 and scenario.cluster.replica.vllm_batch_rule == "sum"
    defaults = scenario_from_args(build_parser().parse_args(["simulate"]))
    assert defaults.cluster.kv_granularity is None and defaults.cluster.replica.vllm_batch_rule == "padded"
    assert cli_main(["simulate", "--kv-granularity", "0", "--num-requests", "5"]) == 2
    assert "cluster.kv_granularity: must be a positive integer" in capsys.readouterr().err


def test_run_simulation_times_iterations_with_the_time_models_it_is_given():
    scenario = Scenario(cluster=ClusterConfig(num_replicas=2), workload=WorkloadConfig(num_requests=20, qps=2.0),
                        load=None)
    slow = RecordingModel()  # constant lookups: far slower than the builtin model at small batches
    fast = run_simulation(scenario, seed=1).metrics["request_e2e_time"]["mean"]
    given = run_simulation(scenario, seed=1, time_models=[slow, slow]).metrics["request_e2e_time"]["mean"]
    assert slow.calls and given > 2 * fast



def test_a_one_token_chunk_is_a_prefill_under_vidur_main_and_a_decode_under_the_pypi_build():
    """Vidur main's predictor asks ``is_prefill_complete`` (still False for a last chunk of one
    token): a prefill at chunk 1. The PyPI build classifies by query length: a decode at KV + 1."""
    main, pypi = RecordingModel(), RecordingModel(keying="vidur_pypi")
    main.iteration_time(2, 2 * 100, (1,), (1001,))
    pypi.iteration_time(2, 2 * 100, (1,), (1001,))
    assert ("prefill", 1024, 1) in main.calls and ("decode", 2, 128) in main.calls
    assert not any(call[0] == "prefill" for call in pypi.calls) and ("decode", 3, 512) in pypi.calls
