"""Workload generators: statistics of each arrival process and length distribution, Vidur's
quirks (gap clipping, max_tokens cuts, Zipf formulas, replay rounding), determinism,
validation errors naming the field, and the embedded conversation-trace default."""
from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from vidur_env.workload import (
    Requests,
    WorkloadConfig,
    WorkloadConfigError,
    cut_proportionally,
    default_length_model,
    describe,
    gamma_arrivals,
    generate_requests,
    poisson_arrivals,
    zipf_lengths,
)

FIXTURES = Path(__file__).parent / "fixtures"
REPLAY = str(FIXTURES / "vidur_replay.csv")
LENGTHS_ONLY = str(FIXTURES / "vidur_lengths.csv")

CONVERSATION = {"prompt_mean": 1155, "prompt_median": 1020, "output_mean": 211, "output_median": 129}
"""Figures of splitwise_conv.csv as documented in CALIBRATION.md (no shared data needed)."""


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------------
# Output type


def test_requests_types_and_order():
    requests = generate_requests(WorkloadConfig(), rng())
    assert isinstance(requests, Requests) and len(requests) == 512
    assert requests.arrived_at.dtype == np.float64
    assert requests.num_prefill_tokens.dtype == np.int64
    assert requests.num_decode_tokens.dtype == np.int64
    assert np.all(np.diff(requests.arrived_at) >= 0)
    assert requests.num_prefill_tokens.min() >= 1 and requests.num_decode_tokens.min() >= 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        requests.arrived_at = np.zeros(3)


DETERMINISM_CONFIGS = [
    WorkloadConfig(),
    WorkloadConfig(arrival="gamma", lengths="uniform"),
    WorkloadConfig(arrival="poisson", lengths="zipf", zipf_scramble=True),
    WorkloadConfig(lengths="trace", trace=LENGTHS_ONLY, num_requests=4),
]


@pytest.mark.parametrize("config", DETERMINISM_CONFIGS, ids=describe)
def test_same_seed_same_requests(config):
    a, b, c = (generate_requests(config, rng(seed)) for seed in (7, 7, 8))
    for field in ("arrived_at", "num_prefill_tokens", "num_decode_tokens"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.arrived_at, c.arrived_at)


# ----------------------------------------------------------------------------------------------
# Arrival processes


def test_poisson_gaps_are_clipped_at_three_mean_gaps_like_vidur():
    qps, n = 4.0, 200_000
    gaps = np.diff(poisson_arrivals(n, qps, rng()), prepend=0.0)
    capped = np.isclose(gaps, 3.0 / qps, rtol=1e-9, atol=0.0)
    assert gaps.max() == pytest.approx(3.0 / qps)
    assert capped.mean() == pytest.approx(math.exp(-3), rel=0.05)  # P(exponential gap > 3/qps)
    assert gaps.mean() == pytest.approx((1 - math.exp(-3)) / qps, rel=0.01)


def test_poisson_without_clip_is_exponential():
    qps, n = 4.0, 200_000
    gaps = np.diff(poisson_arrivals(n, qps, rng(), clip=False), prepend=0.0)
    assert gaps.max() > 3.0 / qps
    assert gaps.mean() == pytest.approx(1.0 / qps, rel=0.01)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.02)


def test_first_arrival_comes_after_one_gap_like_vidur():
    assert generate_requests(WorkloadConfig(num_requests=1), rng()).arrived_at[0] > 0


@pytest.mark.parametrize("cv", [0.5, 1.1])
def test_gamma_mean_gap_and_cv(cv):
    qps, n = 2.0, 200_000
    gaps = np.diff(gamma_arrivals(n, qps, cv, rng()), prepend=0.0)
    assert gaps.mean() == pytest.approx(1.0 / qps, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.03)


def test_static_arrivals_are_all_zero():
    requests = generate_requests(WorkloadConfig(arrival="static", num_requests=50), rng())
    np.testing.assert_array_equal(requests.arrived_at, np.zeros(50))


def test_trace_arrivals_with_time_scale():
    config = WorkloadConfig(
        arrival="trace", trace=REPLAY, time_scale=2.0, lengths="fixed", num_requests=3
    )
    requests = generate_requests(config, rng())
    np.testing.assert_array_equal(requests.arrived_at, [0.0, 1.0, 2.5])
    np.testing.assert_array_equal(requests.num_prefill_tokens, [2048] * 3)


def test_trace_arrivals_need_time_stamps():
    config = WorkloadConfig(arrival="trace", trace=LENGTHS_ONLY, num_requests=2)
    with pytest.raises(WorkloadConfigError, match="arrival='trace' needs time stamps"):
        generate_requests(config, rng())


# ----------------------------------------------------------------------------------------------
# Length distributions


def test_fixed_lengths_exact():
    config = WorkloadConfig(lengths="fixed", prefill_tokens=300, decode_tokens=20, num_requests=10)
    requests = generate_requests(config, rng())
    np.testing.assert_array_equal(requests.num_prefill_tokens, [300] * 10)
    np.testing.assert_array_equal(requests.num_decode_tokens, [20] * 10)


def test_fixed_defaults_are_vidurs():
    requests = generate_requests(WorkloadConfig(lengths="fixed", num_requests=2), rng())
    assert (requests.num_prefill_tokens[0], requests.num_decode_tokens[0]) == (2048, 512)


def test_uniform_lengths_follow_vidurs_split():
    config = WorkloadConfig(arrival="static", lengths="uniform", num_requests=100_000)
    requests = generate_requests(config, rng(3))
    total = rng(3).uniform(1024, 4096, 100_000)  # static arrivals draw nothing first
    decode = np.ceil(total / 21.0)
    np.testing.assert_array_equal(requests.num_decode_tokens, decode)
    np.testing.assert_array_equal(requests.num_prefill_tokens, np.floor(total - decode))
    totals = requests.num_prefill_tokens + requests.num_decode_tokens
    assert totals.min() >= 1024 and totals.max() <= 4096
    assert totals.mean() == pytest.approx((1024 + 4096) / 2, rel=0.01)


def vidur_zipf_totals(draws: np.ndarray, lo: int, hi: int, theta: float) -> list[int]:
    """Vidur's ZipfGenerator._next for each uniform draw, written out scalar by scalar."""
    items = hi - lo + 1
    zeta_n = sum(1.0 / i**theta for i in range(1, items))  # Vidur's zeta stops at items - 1
    zeta_2 = 1.0
    eta = (1 - (2.0 / items) ** (1 - theta)) / (1 - zeta_2 / (zeta_n + 1e-8))
    totals = []
    for u in draws:
        if u * zeta_n < 1.0:
            totals.append(lo)
        elif u * zeta_n < 1.0 + 0.5**theta:
            totals.append(lo + 1)
        else:
            totals.append(lo + int(items * (eta * u - eta + 1) ** (1.0 / (1.0 - theta))))
    return totals


def test_zipf_matches_vidurs_generator_draw_for_draw():
    n, lo, hi, theta, ratio = 2000, 1024, 4096, 0.6, 20.0
    prefill, decode = zipf_lengths(n, lo, hi, theta, ratio, rng(5))
    totals = np.array(vidur_zipf_totals(rng(5).random(n), lo, hi, theta), dtype=float)
    np.testing.assert_array_equal(decode, (totals / (1 + ratio)).astype(np.int64))
    np.testing.assert_array_equal(prefill, (totals - totals / (1 + ratio)).astype(np.int64))


def test_zipf_favours_short_requests():
    prefill, decode = zipf_lengths(100_000, 1024, 4096, 0.6, 20.0, rng())
    totals = prefill + decode
    assert totals.min() >= 1023 and totals.max() <= 4096
    zeta_n = sum(1.0 / i**0.6 for i in range(1, 3073))
    assert np.mean(totals == 1023) == pytest.approx(1.0 / zeta_n, rel=0.1)  # rank 0 = min_tokens
    assert np.median(totals) < (1024 + 4096) / 2


def test_zipf_scramble_keeps_range_and_changes_order():
    plain = zipf_lengths(50_000, 1024, 4096, 0.6, 20.0, rng())[0]
    scrambled = zipf_lengths(50_000, 1024, 4096, 0.6, 20.0, rng(), scramble=True)[0]
    assert scrambled.min() >= 970 and scrambled.max() <= 3901
    assert np.median(scrambled) > np.median(plain)


def test_proportional_cut_matches_vidurs_rounding():
    prefill, decode = cut_proportionally(
        np.array([4000, 1, 100, 5000]), np.array([200, 5000, 100, 100]), 4096
    )
    # 4000+200: excess 104, cuts ceil(99.05)=100 and ceil(4.95)=5, one token below the cap
    np.testing.assert_array_equal(prefill, [3900, 1, 100, 4015])
    np.testing.assert_array_equal(decode, [195, 4095, 100, 80])


def test_trace_sampled_lengths_are_shuffled_rows_cut_proportionally():
    config = WorkloadConfig(lengths="trace", trace=LENGTHS_ONLY, num_requests=None)
    a = generate_requests(config, rng(1))
    pairs = sorted(zip(a.num_prefill_tokens.tolist(), a.num_decode_tokens.tolist()))
    assert pairs == [(12, 3), (2015, 156), (3772, 54), (4015, 80)]
    orders = {tuple(generate_requests(config, rng(s)).num_prefill_tokens) for s in range(10)}
    assert len(orders) > 1


def test_trace_sampled_lengths_with_scale_factors_truncate():
    config = WorkloadConfig(
        lengths="trace", trace=LENGTHS_ONLY, num_requests=None, prefill_scale=0.5, decode_scale=0.3
    )
    requests = generate_requests(config, rng())
    pairs = sorted(zip(requests.num_prefill_tokens.tolist(), requests.num_decode_tokens.tolist()))
    assert pairs == [(6, 1), (1007, 46), (1886, 16), (2500, 30)]


def test_more_requests_than_trace_rows_is_an_error():
    config = WorkloadConfig(lengths="trace", trace=LENGTHS_ONLY, num_requests=5)
    with pytest.raises(WorkloadConfigError, match="num_requests=5 .* only 4 usable rows"):
        generate_requests(config, rng())


def test_zero_token_rows_dropped_with_a_warning(tmp_path):
    trace = tmp_path / "zeros.csv"
    shutil.copy(FIXTURES / "zero_tokens.csv", trace)
    config = WorkloadConfig(
        lengths="trace", trace=str(trace), num_requests=None, trace_zero_tokens="drop"
    )
    with pytest.warns(UserWarning, match="1 rows with 0 prompt or output tokens were dropped"):
        requests = generate_requests(config, rng())
    assert len(requests) == 2


# ----------------------------------------------------------------------------------------------
# Trace replay (arrival="trace" and lengths="trace")


def replay(**overrides) -> Requests:
    config = WorkloadConfig(arrival="trace", lengths="trace", trace=REPLAY, num_requests=None)
    return generate_requests(dataclasses.replace(config, **overrides), rng())


def test_replay_keeps_order_and_cuts_only_the_prompt():
    requests = replay()
    np.testing.assert_array_equal(requests.arrived_at, [0.0, 0.5, 1.25, 1.25, 3.0])
    np.testing.assert_array_equal(requests.num_prefill_tokens, [375, 3896, 1020, 7, 2048])
    np.testing.assert_array_equal(requests.num_decode_tokens, [45, 200, 129, 1, 512])


def test_replay_scales_truncate_and_keep_one_token():
    requests = replay(time_scale=2.0, prefill_scale=0.5, decode_scale=0.1)
    np.testing.assert_array_equal(requests.arrived_at, [0.0, 1.0, 2.5, 2.5, 6.0])
    np.testing.assert_array_equal(requests.num_prefill_tokens, [187, 2000, 510, 3, 1024])
    np.testing.assert_array_equal(requests.num_decode_tokens, [4, 20, 12, 1, 51])


def test_replay_takes_the_first_rows():
    requests = replay(num_requests=2)
    np.testing.assert_array_equal(requests.arrived_at, [0.0, 0.5])


def test_replay_output_longer_than_max_tokens_names_the_line():
    with pytest.raises(WorkloadConfigError, match=r"decode_too_long\.csv:2: output of 5000 tokens"):
        replay(trace=str(FIXTURES / "decode_too_long.csv"))


# ----------------------------------------------------------------------------------------------
# The embedded conversation-trace default


def test_default_lengths_match_the_conversation_trace():
    config = WorkloadConfig(arrival="static", num_requests=400_000, max_tokens=1_000_000)
    requests = generate_requests(config, rng())
    prompt, output = requests.num_prefill_tokens, requests.num_decode_tokens
    assert prompt.mean() == pytest.approx(CONVERSATION["prompt_mean"], rel=0.015)
    assert np.median(prompt) == pytest.approx(CONVERSATION["prompt_median"], rel=0.01)
    assert output.mean() == pytest.approx(CONVERSATION["output_mean"], rel=0.015)
    assert np.median(output) == pytest.approx(CONVERSATION["output_median"], rel=0.02)


def test_default_lengths_are_cut_to_max_tokens():
    requests = generate_requests(WorkloadConfig(arrival="static", num_requests=100_000), rng())
    totals = requests.num_prefill_tokens + requests.num_decode_tokens
    assert totals.max() <= 4096
    assert np.mean(totals >= 4095) == pytest.approx(0.08, abs=0.01)  # ~8% of the trace is cut


def test_default_rates_are_the_conversation_traces():
    stats = default_length_model().trace_stats
    config = WorkloadConfig()
    assert config.qps == pytest.approx(stats["qps"], abs=0.05)
    assert config.cv == pytest.approx(stats["interarrival_cv"], abs=0.01)
    assert stats["rows"] == 19366


# ----------------------------------------------------------------------------------------------
# Validation: every bad field is named

BAD_CONFIGS = [
    ({"num_requests": 0}, "num_requests"),
    ({"num_requests": 2.5}, "num_requests"),
    ({"num_requests": None}, "num_requests"),
    ({"arrival": "uniform"}, "arrival"),
    ({"lengths": "normal"}, "lengths"),
    ({"qps": 0}, "qps"),
    ({"qps": float("nan")}, "qps"),
    ({"cv": -1.0}, "cv"),
    ({"poisson_clip": "yes"}, "poisson_clip"),
    ({"max_tokens": 1}, "max_tokens"),
    ({"lengths": "fixed", "prefill_tokens": 4000}, "prefill_tokens"),
    ({"lengths": "fixed", "decode_tokens": 0}, "decode_tokens"),
    ({"lengths": "uniform", "min_tokens": 5000}, "min_tokens"),
    ({"lengths": "uniform", "max_tokens_uniform": 8192}, "max_tokens_uniform"),
    ({"lengths": "zipf", "min_tokens": 10}, "min_tokens"),
    ({"zipf_theta": 1.0}, "zipf_theta"),
    ({"arrival": "trace"}, "trace"),
    ({"lengths": "trace", "trace": "no/such/file.csv"}, "trace"),
    ({"time_scale": 0.0}, "time_scale"),
    ({"decode_scale": -1.0}, "decode_scale"),
    ({"lengths": "trace", "trace": REPLAY, "trace_format": "csv"}, "trace_format"),
    ({"lengths": "trace", "trace": REPLAY, "trace_zero_tokens": "skip"}, "trace_zero_tokens"),
]


@pytest.mark.parametrize("overrides, field", BAD_CONFIGS, ids=[f for _, f in BAD_CONFIGS])
def test_invalid_config_names_the_field(overrides, field):
    config = WorkloadConfig(**overrides)
    with pytest.raises(WorkloadConfigError, match=rf"WorkloadConfig\.{field}: "):
        config.validate()
    with pytest.raises(WorkloadConfigError):
        generate_requests(config, rng())


def test_default_config_is_valid():
    WorkloadConfig().validate()


def test_trace_fields_are_ignored_when_no_trace_is_used():
    """Variants derived with replace() (e.g. a saturation probe) must stay valid."""
    replay_config = WorkloadConfig(
        arrival="trace", lengths="trace", trace=REPLAY, time_scale=0.5, prefill_scale=0.5
    )
    probe = dataclasses.replace(replay_config, arrival="static", lengths="fixed", num_requests=3)
    requests = generate_requests(probe, rng())
    np.testing.assert_array_equal(requests.num_prefill_tokens, [2048] * 3)


def test_describe_summarises_the_config():
    assert "Poisson 5.5 req/s" in describe(WorkloadConfig())
    assert "3/qps" in describe(WorkloadConfig())
    assert "median 1020" in describe(WorkloadConfig())
    assert "trace replay" in describe(WorkloadConfig(arrival="trace", lengths="trace", trace=REPLAY))
    assert "gamma 2 req/s, CV 0.5" in describe(WorkloadConfig(arrival="gamma", qps=2, cv=0.5))


# ----------------------------------------------------------------------------------------------
# The real conversation trace (../shared/data)


@pytest.mark.needs_shared_data
def test_replay_of_the_real_conversation_trace(shared_data):
    path = str(shared_data / "processed_traces" / "splitwise_conv.csv")
    config = WorkloadConfig(arrival="trace", lengths="trace", trace=path, num_requests=None)
    requests = generate_requests(config, rng())
    assert len(requests) == 19366
    totals = requests.num_prefill_tokens + requests.num_decode_tokens
    assert totals.max() == 4096
    assert requests.num_decode_tokens.mean() == pytest.approx(211.13, abs=0.01)  # outputs uncut
    assert len(requests) / requests.arrived_at[-1] == pytest.approx(5.53, abs=0.01)


@pytest.mark.needs_shared_data
def test_default_fit_matches_trace_sampling_after_the_cut(shared_data):
    path = str(shared_data / "processed_traces" / "splitwise_conv.csv")
    sampled = generate_requests(WorkloadConfig(lengths="trace", trace=path, num_requests=None), rng())
    fitted = generate_requests(WorkloadConfig(num_requests=200_000), rng())
    for field in ("num_prefill_tokens", "num_decode_tokens"):
        real, fit = getattr(sampled, field), getattr(fitted, field)
        assert fit.mean() == pytest.approx(real.mean(), rel=0.02)
        assert np.median(fit) == pytest.approx(np.median(real), rel=0.02)


# ----------------------------------------------------------------------------------------------
# Trace windows (trace_offset) and the count of requests cut to max_tokens (issue 9, points 1, 3)


def test_trace_offset_takes_rows_from_there_with_times_shifted_to_the_trace_start():
    requests = replay(trace_offset=2, num_requests=3)
    np.testing.assert_array_equal(requests.arrived_at, [0.0, 0.0, 1.75])  # rows 3-5 at 1.25, 1.25, 3.0
    np.testing.assert_array_equal(requests.num_prefill_tokens, [1020, 7, 2048])


def test_trace_offset_none_requests_means_every_row_from_the_offset():
    assert len(replay(trace_offset=3)) == 2


def test_trace_offset_past_the_rows_names_both_numbers():
    with pytest.raises(WorkloadConfigError, match=r"num_requests=3 .*from row 3 on: only 2 usable rows"):
        replay(trace_offset=3, num_requests=3)


def test_random_trace_offset_is_drawn_from_the_generator():
    config = WorkloadConfig(arrival="trace", lengths="trace", trace=REPLAY, num_requests=2, trace_offset="random")
    starts = {int(generate_requests(config, rng(seed)).num_prefill_tokens[0]) for seed in range(40)}
    assert starts == {375, 3896, 1020, 7}  # first rows of the four possible 2-row windows
    first, again = generate_requests(config, rng(5)), generate_requests(config, rng(5))
    np.testing.assert_array_equal(first.num_prefill_tokens, again.num_prefill_tokens)
    assert first.arrived_at[0] == 0.0


@pytest.mark.parametrize("offset", [-1, 1.5, "first"])
def test_bad_trace_offset_names_the_field(offset):
    with pytest.raises(WorkloadConfigError, match="trace_offset"):
        WorkloadConfig(trace_offset=offset).validate()


def test_replay_counts_the_prompts_it_cuts():
    assert replay().num_cut == 1  # the 4000 + 200 row of vidur_replay.csv
    assert replay(max_tokens=100_000).num_cut == 0


def test_sampled_lengths_count_the_requests_they_cut():
    config = WorkloadConfig(arrival="static", lengths="trace", trace=REPLAY, num_requests=None, max_tokens=1000)
    requests = generate_requests(config, rng())
    assert requests.num_cut == 3  # 4000 + 200, 1020 + 129, 2048 + 512 exceed 1000
    assert (requests.num_prefill_tokens + requests.num_decode_tokens <= 1000).all()


def test_the_sample_trace_is_found_by_name():
    requests = generate_requests(WorkloadConfig(trace="sample", arrival="trace", lengths="trace", num_requests=None),
                                 rng())
    assert len(requests) == 300
