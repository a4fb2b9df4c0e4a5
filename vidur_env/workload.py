"""Workloads: when requests arrive and how many prompt and output tokens they carry.

One :class:`WorkloadConfig` picks an arrival process and a length distribution;
:func:`generate_requests` turns it and a NumPy ``Generator`` into flat :class:`Requests` arrays.
The generators follow Vidur's request generators (``vidur/request_generator`` on the main
branch); every Vidur quirk reproduced here says so in its docstring. What differs is the
randomness: Vidur seeds Python's global ``random`` and NumPy's global state with a seed, here
every draw comes from the ``Generator`` passed in, so runs are reproducible without any global
state but not draw-for-draw identical to Vidur's.

Arrivals (``arrival``): ``poisson`` (gaps clipped at 3/qps like Vidur), ``gamma`` (``cv``),
``static`` (everything at t=0), ``trace`` (time stamps of a trace file, times ``time_scale``).

Lengths (``lengths``): ``default`` (a fit of the Azure 2023 conversation trace embedded in
``data/default_workload.json``), ``fixed``, ``uniform``, ``zipf``, ``trace`` (rows of a trace
file, shuffled). ``arrival="trace"`` together with ``lengths="trace"`` is Vidur's trace
*replay*: rows in file order, only prompts cut to fit ``max_tokens``.

Nothing is cut silently: :attr:`Requests.num_cut` counts the requests shortened to fit
``max_tokens``, and the CLI reports it. ``trace="sample"`` selects the small trace shipped with
the package (see :func:`vidur_env.traces.trace_path`).
"""
from __future__ import annotations

import functools
import json
import math
import os
import warnings
from dataclasses import dataclass, replace
from importlib import resources
from typing import Optional

import numpy as np

from vidur_env.errors import ConfigError, setting
from vidur_env.hardware import DEFAULT_MAX_TOKENS
from vidur_env.sessions import SessionConfig, SessionConfigError, generate_sessions
from vidur_env.traces import AUTO_FORMAT, FORMAT_CHOICES, SAMPLE_TRACES, ZERO_TOKEN_POLICIES, Trace, read_trace, trace_path

ARRIVALS = ("poisson", "gamma", "static", "trace")
"""Arrival processes :attr:`WorkloadConfig.arrival` accepts."""

LENGTHS = ("default", "fixed", "uniform", "zipf", "trace")
"""Length distributions :attr:`WorkloadConfig.lengths` accepts."""

POISSON_CLIP_GAPS = 3.0
"""Vidur caps every Poisson gap at this many mean gaps (``max_interval = 3 / qps``)."""


@dataclass(frozen=True)
class Requests:
    """The requests of one workload, column-wise, sorted by arrival time."""

    arrived_at: np.ndarray
    """float64 seconds, non-decreasing."""
    num_prefill_tokens: np.ndarray
    """int64 prompt tokens, >= 1."""
    num_decode_tokens: np.ndarray
    """int64 output tokens, >= 1 (the prefill iteration emits the first one)."""
    num_cut: int = 0
    """Requests that were longer than ``max_tokens`` and were shortened to fit, as Vidur does
    (the prompt only in a trace replay, prompt and output in proportion otherwise)."""
    block_hashes: Optional[list[Optional[tuple[int, ...]]]] = None
    """Per request, the keys of its full 16-token blocks (prompt then output; key i names its
    first 16 * (i + 1) tokens; see :data:`vidur_env.request_table.BlockHashes`), or None per
    request / for the whole workload when there is no prefix identity. Filled from traces that
    carry it (replayed or shuffled rows) and by the session generator (``WorkloadConfig.sessions``)."""

    def __len__(self) -> int:
        return len(self.arrived_at)


class WorkloadConfigError(ConfigError):
    """A :class:`WorkloadConfig` field with an unusable value; the message names the field."""


@dataclass
class WorkloadConfig:
    """Which requests a simulation serves. Defaults: 512 requests, Poisson arrivals at the
    conversation trace's rate, prompt/output lengths from the embedded conversation-trace fit."""

    num_requests: Optional[int] = 512
    """Number of requests. None = every row of ``trace`` (only when a trace is used)."""
    arrival: str = "poisson"
    """Arrival process: poisson | gamma | static | trace."""
    qps: float = 5.5
    """Mean arrival rate in requests per second (poisson, gamma). Default: the conversation
    trace's rate (5.53 req/s)."""
    poisson_clip: bool = True
    """Cap each Poisson gap at 3/qps as Vidur does (the actual rate is then 5% above qps)."""
    cv: float = 1.1
    """Coefficient of variation of gamma inter-arrival gaps. Default: the conversation trace's
    (1.09); Vidur's default is 0.5, and cv=1 is a Poisson process."""
    lengths: str = "default"
    """Length distribution: default | fixed | uniform | zipf | trace."""
    prefill_tokens: int = 2048
    """Prompt tokens of every request (lengths=fixed; Vidur's default)."""
    decode_tokens: int = 512
    """Output tokens of every request (lengths=fixed; Vidur's default)."""
    min_tokens: int = 1024
    """Smallest total (prompt + output) tokens for lengths=uniform and zipf."""
    max_tokens_uniform: Optional[int] = None
    """Largest total tokens for lengths=uniform and zipf; None = max_tokens (Vidur uses one
    max_tokens field for both)."""
    prefill_to_decode_ratio: float = 20.0
    """Prompt:output token ratio for lengths=uniform and zipf."""
    zipf_theta: float = 0.6
    """Zipf skew in [0, 1) for lengths=zipf; larger favours short requests more."""
    zipf_scramble: bool = False
    """Map Zipf ranks to lengths through a seeded permutation, so that popular lengths are not
    the shortest ones."""
    trace: Optional[str] = None
    """Trace file for arrival=trace and/or lengths=trace (ignored otherwise); ``"sample"`` is the
    small trace shipped with the package (a file of that name in the working directory wins)."""
    sessions: Optional[SessionConfig] = None
    """Multi-turn sessions on shared system prompts (:class:`vidur_env.sessions.SessionConfig`,
    or a dict of its fields): when set, it makes the requests (with their prefix block keys)
    instead of ``lengths``; ``arrival`` must be poisson (session starts at ``qps`` divided by the
    mean turns per session, so requests arrive at about ``qps``) or static (all at t=0)."""
    trace_offset: int | str = 0
    """First trace row used when rows are taken in file order (arrival=trace): rows
    ``offset .. offset + num_requests - 1``, times shifted so that the first of them arrives at
    the trace's first time stamp. ``"random"`` draws the offset uniformly from the generator on
    every call (a new window of the trace per RL episode, reproducible by seed)."""
    trace_format: str = AUTO_FORMAT
    """Trace format: auto | vidur | vidur_lengths | azure | mooncake (see vidur_env.traces)."""
    trace_zero_tokens: str = ZERO_TOKEN_POLICIES[0]
    """Trace rows with 0 prompt or output tokens: error | drop | clip (to 1); dropped or
    clipped rows are counted in a warning."""
    time_scale: float = 1.0
    """Multiplies trace arrival times (Vidur's time_scale_factor): 0.5 replays twice as fast.
    Used only by arrival=trace."""
    prefill_scale: float = 1.0
    """Multiplies prompt lengths before truncating to integers (Vidur's prefill_scale_factor,
    which scales trace lengths; here lengths=default too, so that training traffic can vary
    its lengths, see :class:`vidur_env.scenarios.TrafficRange`). Used by lengths=trace and
    default; a prompt never drops below 1 token."""
    decode_scale: float = 1.0
    """Multiplies output lengths like ``prefill_scale`` (Vidur's decode_scale_factor). Used by
    lengths=trace and default."""
    max_tokens: int = DEFAULT_MAX_TOKENS
    """Largest prompt + output of a request (Vidur's max_tokens): longer sampled or trace
    requests are cut (and counted in :attr:`Requests.num_cut`), fixed/uniform/zipf settings
    beyond it are rejected."""
    allow_beyond_context: bool = False
    """Accept a ``max_tokens`` above the served models' context length (checked by
    :meth:`vidur_env.simulation.Scenario.validate`, which knows the models)."""

    def validate(self) -> None:
        """Raise :class:`WorkloadConfigError` naming the first field with an unusable value."""
        _check_choices(self)
        _check_numbers(self)
        _check_trace_fields(self)
        _check_synthetic_lengths(self)
        _check_sessions(self)


def generate_requests(config: WorkloadConfig, rng: np.random.Generator) -> Requests:
    """The requests ``config`` describes; random draws come only from ``rng``."""
    config.validate()
    if config.sessions is not None:
        return _session_requests(config, rng)
    trace = _load_trace(config) if uses_trace(config) else None
    n = _num_requests(config, trace)
    if trace is not None and config.arrival == "trace":
        trace = trace_window(trace, _offset(config, trace, n, rng), n)
    if config.arrival == "trace" and config.lengths == "trace":
        return replay_trace(
            trace, n, config.time_scale, config.prefill_scale, config.decode_scale,
            config.max_tokens,
        )
    arrived_at = _arrivals(config, n, rng, trace)
    prefill, decode, rows = _uncut_lengths(config, n, rng, trace)
    num_cut = int(np.count_nonzero(prefill + decode > config.max_tokens))
    prefill, decode = cut_proportionally(prefill, decode, config.max_tokens)
    hashes = None if rows is None else trace.rows(rows).block_hashes(prefill, decode)
    return Requests(arrived_at, prefill, decode, num_cut, hashes)


def _session_requests(config: WorkloadConfig, rng: np.random.Generator) -> Requests:
    """Requests of the session generator: session starts Poisson at ``qps / mean turns``
    (or all at t=0 with ``arrival="static"``)."""
    sessions = session_config(config)
    starts_per_s = config.qps / sessions.mean_turns
    arrived_at, prefill, decode, hashes = generate_sessions(
        sessions, config.num_requests, starts_per_s, config.max_tokens, rng,
    )
    if config.arrival == "static":
        arrived_at = np.zeros_like(arrived_at)
    return Requests(arrived_at, prefill, decode, 0, hashes)


def session_config(config: WorkloadConfig) -> SessionConfig:
    """``config.sessions`` as a :class:`SessionConfig` (a dict is converted, unknown keys raise)."""
    sessions = config.sessions
    if isinstance(sessions, dict):
        unknown = sorted(set(sessions) - set(SessionConfig.__dataclass_fields__))
        if unknown:
            _fail("sessions", f"unknown key(s) {', '.join(unknown)}; known: {', '.join(SessionConfig.__dataclass_fields__)}")
        sessions = SessionConfig(**sessions)
    if not isinstance(sessions, SessionConfig):
        _fail("sessions", f"expected a SessionConfig, a dict or None; got {type(sessions).__name__}")
    return sessions


def describe(config: WorkloadConfig) -> str:
    """One line saying what ``config`` generates, for reports and logs."""
    if config.sessions is not None:
        sessions = session_config(config)
        starts = ("all at t=0" if config.arrival == "static" else
                  f"sessions start as a Poisson process of {config.qps / sessions.mean_turns:g}/s "
                  f"(about {config.qps:g} req/s)")
        return f"{config.num_requests} requests; {sessions.describe()}; {starts}"
    count = "every trace row" if config.num_requests is None else f"{config.num_requests} requests"
    if config.arrival == "trace" and config.trace_offset != 0:
        start = "a random row" if config.trace_offset == "random" else f"row {config.trace_offset}"
        count = f"{count} from {start}"
    if config.arrival == "trace" and config.lengths == "trace":
        body = (
            f"trace replay of {config.trace} ({config.trace_format}), "
            f"times x{config.time_scale:g}, "
            f"prompts x{config.prefill_scale:g}, outputs x{config.decode_scale:g}, "
            f"prompts cut to fit {config.max_tokens} tokens"
        )
        return f"{count}; {body}"
    return f"{count}; arrivals: {_describe_arrivals(config)}; lengths: {_describe_lengths(config)}"


# ----------------------------------------------------------------------------------------------
# Arrival processes


def poisson_arrivals(n: int, qps: float, rng: np.random.Generator, clip: bool = True) -> np.ndarray:
    """Arrival times of a Poisson process of rate ``qps``.

    Vidur quirks kept: each exponential gap is capped at ``3 / qps`` (``clip=True``), which
    raises the real rate to ``qps / (1 - e^-3)``, about 5% above ``qps``; and the first request
    arrives after one gap, not at t=0.
    """
    gaps = rng.exponential(1.0 / qps, n)
    if clip:
        gaps = np.minimum(gaps, POISSON_CLIP_GAPS / qps)
    return np.cumsum(gaps)


def gamma_arrivals(n: int, qps: float, cv: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival times with gamma gaps of mean ``1/qps`` and coefficient of variation ``cv``
    (shape ``1/cv^2``, scale ``cv^2/qps``, as Vidur). The first request arrives after one gap."""
    shape = 1.0 / cv**2
    return np.cumsum(rng.gamma(shape, 1.0 / (qps * shape), n))


def static_arrivals(n: int) -> np.ndarray:
    """Every request at t=0 (Vidur's static interval generator)."""
    return np.zeros(n)


def trace_arrivals(trace: Trace, n: int, time_scale: float) -> np.ndarray:
    """The first ``n`` time stamps of ``trace`` times ``time_scale``.

    Unlike Vidur's interval-trace generator (which reads a separate Azure Functions CSV, floors
    times to whole seconds and starts the first request at its second row's gap), the times
    are used as they are, like Vidur's trace replay does.
    """
    return trace.arrived_at[:n] * time_scale


# ----------------------------------------------------------------------------------------------
# Length distributions


def fixed_lengths(n: int, prefill_tokens: int, decode_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """The same prompt and output for every request."""
    return np.full(n, prefill_tokens, dtype=np.int64), np.full(n, decode_tokens, dtype=np.int64)


def uniform_lengths(
    n: int, min_tokens: int, max_tokens: int, ratio: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Totals uniform on ``[min_tokens, max_tokens]`` split ``ratio``:1 into prompt:output.

    As Vidur: the total is a real number, the output is ``ceil(total / (1 + ratio))`` and the
    prompt is the rest truncated to an integer, so prompt + output = floor(total).
    """
    total = rng.uniform(min_tokens, max_tokens, n)
    decode = np.ceil(total / (1.0 + ratio))
    return (total - decode).astype(np.int64), decode.astype(np.int64)


def zipf_lengths(
    n: int,
    min_tokens: int,
    max_tokens: int,
    theta: float,
    ratio: float,
    rng: np.random.Generator,
    scramble: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Zipf-distributed totals on ``[min_tokens, max_tokens]`` split ``ratio``:1.

    Vidur's ``ZipfGenerator`` (Gray et al.'s rejection-free Zipf sampler, as in YCSB) with its
    quirks: its zeta(n) sums ``1/i^theta`` for i < n (one term short), and both parts are
    truncated to integers separately, so prompt + output may be one below the total.
    ``scramble`` differs: Vidur maps each rank through Python's salted ``hash()``, which
    changes from process to process; here a permutation drawn from ``rng`` does that job.
    """
    ranks = _zipf_ranks(n, max_tokens - min_tokens + 1, theta, rng)
    if scramble:
        ranks = rng.permutation(max_tokens - min_tokens + 1)[ranks]
    total = (min_tokens + ranks).astype(np.float64)
    decode = total / (1.0 + ratio)
    return (total - decode).astype(np.int64), decode.astype(np.int64)


def _zipf_ranks(n: int, items: int, theta: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-based Zipf ranks over ``items`` values, by Vidur's ZipfGenerator formulas."""
    zeta_n = _vidur_zeta(items, theta)
    zeta_2 = _vidur_zeta(2, theta)
    alpha = 1.0 / (1.0 - theta)
    eta = (1.0 - (2.0 / items) ** (1.0 - theta)) / (1.0 - zeta_2 / (zeta_n + 1e-8))
    u = rng.random(n)
    uz = u * zeta_n
    ranks = np.ones(n, dtype=np.int64)
    ranks[uz < 1.0] = 0
    tail = uz >= 1.0 + 0.5**theta
    ranks[tail] = (items * (eta * u[tail] - eta + 1.0) ** alpha).astype(np.int64)
    return ranks


def _vidur_zeta(count: int, theta: float) -> float:
    """Vidur's zeta: the sum of ``1/i^theta`` for i = 1 .. count-1 (one term short of zeta)."""
    return float(np.sum(1.0 / np.power(np.arange(1, count, dtype=np.float64), theta)))


def cut_proportionally(
    prefill: np.ndarray, decode: np.ndarray, max_tokens: int
) -> tuple[np.ndarray, np.ndarray]:
    """Shorten requests longer than ``max_tokens`` in proportion to their prompt and output.

    Vidur's TraceRequestLengthGenerator: the excess over ``max_tokens`` is split by the
    prompt and output shares, each share rounded *up* (so a cut request may end one token
    short of ``max_tokens``), then both parts are raised to at least 1.
    """
    total = prefill + decode
    excess = np.maximum(total - max_tokens, 0)
    safe_total = np.maximum(total, 1)
    prefill = prefill - np.ceil(excess * (prefill / safe_total)).astype(np.int64)
    decode = decode - np.ceil(excess * (decode / safe_total)).astype(np.int64)
    return np.maximum(prefill, 1), np.maximum(decode, 1)


def scale_tokens(tokens: np.ndarray, scale: float) -> np.ndarray:
    """Token counts times ``scale``, truncated toward zero (Vidur's ``astype(int)``)."""
    return tokens if scale == 1.0 else (tokens * scale).astype(np.int64)


def trace_sampled_lengths(
    trace: Trace,
    n: int,
    prefill_scale: float,
    decode_scale: float,
    max_tokens: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows of ``trace`` in a random order (Vidur's TraceRequestLengthGenerator).

    As Vidur: lengths are scaled and truncated, cut with :func:`cut_proportionally`, and the
    rows shuffled without replacement; ``n`` may not exceed the trace length.
    """
    prefill, decode = shuffled_trace_rows(trace, n, prefill_scale, decode_scale, rng)
    return cut_proportionally(prefill, decode, max_tokens)


def shuffled_trace_rows(
    trace: Trace, n: int, prefill_scale: float, decode_scale: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` rows of ``trace`` drawn without replacement, scaled and truncated, not yet cut;
    with the drawn row indices (for the rows' prefix block keys)."""
    rows = rng.permutation(len(trace))[:n]
    return (
        scale_tokens(trace.num_prefill_tokens[rows], prefill_scale),
        scale_tokens(trace.num_decode_tokens[rows], decode_scale),
        rows,
    )


def trace_window(trace: Trace, start: int, n: int) -> Trace:
    """Rows ``start .. start + n - 1`` of ``trace``, their times shifted so that the first one
    arrives at the trace's first time stamp (``start=0`` returns the rows unchanged)."""
    if start == 0:
        return trace
    window = trace.rows(slice(start, start + n))
    return replace(window, arrived_at=window.arrived_at - trace.arrived_at[start] + trace.arrived_at[0])


def replay_trace(
    trace: Trace,
    n: int,
    time_scale: float,
    prefill_scale: float,
    decode_scale: float,
    max_tokens: int,
) -> Requests:
    """The first ``n`` rows of ``trace`` in file order (Vidur's TraceReplayRequestGenerator).

    As Vidur: times are multiplied by ``time_scale`` (not shifted to start at 0); prompt and
    output are scaled, truncated to integers and raised to at least 1; then only the prompt is
    shortened so that prompt + output <= ``max_tokens``. A row whose output alone leaves no
    room for a prompt raises (Vidur would create a request with a prompt <= 0). Prefix block
    keys the trace carries are kept up to the request's final full blocks
    (:meth:`vidur_env.traces.Trace.block_hashes`).
    """
    prefill = np.maximum(scale_tokens(trace.num_prefill_tokens[:n], prefill_scale), 1)
    decode = np.maximum(scale_tokens(trace.num_decode_tokens[:n], decode_scale), 1)
    excess = np.maximum(prefill + decode - max_tokens, 0)
    prefill = prefill - excess
    if (prefill < 1).any():
        i = int(np.flatnonzero(prefill < 1)[0])
        raise WorkloadConfigError(
            f"{trace.path}:{int(trace.line_numbers[i])}: output of {int(decode[i])} tokens "
            f"(after decode_scale={decode_scale:g}) leaves no room for a prompt within "
            f"max_tokens={max_tokens}; raise {setting('max_tokens')} or lower {setting('decode_scale')}"
        )
    hashes = trace.block_hashes(prefill, decode)
    return Requests(trace.arrived_at[:n] * time_scale, prefill, decode, int(np.count_nonzero(excess)), hashes)


# ----------------------------------------------------------------------------------------------
# The embedded default: a fit of the Azure 2023 conversation trace


@dataclass(frozen=True)
class DefaultLengthModel:
    """Prompt and output lengths of the conversation trace as a Gaussian copula.

    Each marginal is a table of quantiles at fixed normal scores ``z`` (every percentile plus
    denser points in both tails); a sample draws correlated standard normals (correlation
    ``rho``, chosen to match the trace's Spearman rank correlation) and interpolates each
    table log-linearly. Written by ``benchmarks/fit_default_workload.py``.
    """

    normal_scores: np.ndarray
    prompt_quantiles: np.ndarray
    decode_quantiles: np.ndarray
    rho: float
    trace_stats: dict
    """Figures of the fitted trace: ``prompt``/``decode`` mean, median, p90, p99, ``spearman``,
    ``qps``, ``interarrival_cv``, ``rows``."""

    @classmethod
    def from_dict(cls, data: dict) -> "DefaultLengthModel":
        """The model stored in ``default_workload.json``."""
        copula = data["copula"]
        return cls(
            np.asarray(copula["normal_scores"], dtype=np.float64),
            np.asarray(copula["prompt_quantiles"], dtype=np.float64),
            np.asarray(copula["decode_quantiles"], dtype=np.float64),
            float(copula["rho"]),
            data["trace_stats"],
        )

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` (prompt, output) pairs, uncut, as int64 arrays >= 1."""
        z = rng.standard_normal((2, n))
        z_decode = self.rho * z[0] + math.sqrt(1.0 - self.rho**2) * z[1]
        prompt = self._lookup(z[0], self.prompt_quantiles)
        return prompt, self._lookup(z_decode, self.decode_quantiles)

    def _lookup(self, z: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
        """Token counts at normal scores ``z``, interpolating the quantile table in log space."""
        log_tokens = np.interp(z, self.normal_scores, np.log(quantiles))
        return np.maximum(np.rint(np.exp(log_tokens)), 1).astype(np.int64)


@functools.lru_cache(maxsize=1)
def default_length_model() -> DefaultLengthModel:
    """The conversation-trace fit shipped in ``vidur_env/data/default_workload.json``."""
    text = resources.files("vidur_env").joinpath("data/default_workload.json").read_text()
    return DefaultLengthModel.from_dict(json.loads(text))


def default_lengths(
    n: int, max_tokens: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Conversation-like lengths, cut to ``max_tokens`` the way Vidur cuts sampled trace rows."""
    prefill, decode = default_length_model().sample(n, rng)
    return cut_proportionally(prefill, decode, max_tokens)


# ----------------------------------------------------------------------------------------------
# Dispatch


def _arrivals(
    config: WorkloadConfig, n: int, rng: np.random.Generator, trace: Optional[Trace]
) -> np.ndarray:
    """Arrival times of the configured process."""
    if config.arrival == "poisson":
        return poisson_arrivals(n, config.qps, rng, config.poisson_clip)
    if config.arrival == "gamma":
        return gamma_arrivals(n, config.qps, config.cv, rng)
    if config.arrival == "static":
        return static_arrivals(n)
    return trace_arrivals(trace, n, config.time_scale)


def _uncut_lengths(
    config: WorkloadConfig, n: int, rng: np.random.Generator, trace: Optional[Trace]
) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Prompt and output lengths of the configured distribution, before the ``max_tokens`` cut
    (fixed/uniform/zipf settings are validated to fit, so the cut leaves them unchanged), and
    the trace rows they come from (None for synthetic lengths)."""
    upper = _synthetic_upper(config)
    ratio = config.prefill_to_decode_ratio
    if config.lengths == "default":
        prefill, decode = default_length_model().sample(n, rng)
        return (np.maximum(scale_tokens(prefill, config.prefill_scale), 1),
                np.maximum(scale_tokens(decode, config.decode_scale), 1), None)
    if config.lengths == "fixed":
        return (*fixed_lengths(n, config.prefill_tokens, config.decode_tokens), None)
    if config.lengths == "uniform":
        return (*uniform_lengths(n, config.min_tokens, upper, ratio, rng), None)
    if config.lengths == "zipf":
        lengths = zipf_lengths(n, config.min_tokens, upper, config.zipf_theta, ratio, rng, config.zipf_scramble)
        return (*lengths, None)
    return shuffled_trace_rows(trace, n, config.prefill_scale, config.decode_scale, rng)


def _synthetic_upper(config: WorkloadConfig) -> int:
    """Upper bound of uniform/zipf totals."""
    return config.max_tokens if config.max_tokens_uniform is None else config.max_tokens_uniform


def uses_trace(config: WorkloadConfig) -> bool:
    """Whether ``config`` reads its trace file (for times, lengths or both)."""
    return config.arrival == "trace" or config.lengths == "trace"


def trace_rows(config: WorkloadConfig) -> int:
    """Usable rows of the configured trace (after the zero-token policy)."""
    return len(_load_trace(config))


def _num_requests(config: WorkloadConfig, trace: Optional[Trace]) -> int:
    """``num_requests``, or every trace row from the offset on when it is None; asking for
    more rows than the trace has from there raises naming both numbers."""
    if trace is None:
        return config.num_requests
    start = config.trace_offset if config.arrival == "trace" and config.trace_offset != "random" else 0
    available = len(trace) - start
    if config.num_requests is None:
        if available < 1:
            _fail("trace_offset", f"{start} is past the last of the {len(trace)} usable rows of {config.trace}")
        return available
    if config.num_requests > available:
        origin = f" from row {start} on" if start else ""
        raise WorkloadConfigError(
            f"{setting('num_requests', config.num_requests)} asks for more requests than trace {config.trace} "
            f"has{origin}: only {available} usable rows; ask for at most {available}, or for the whole trace "
            f"with {setting('num_requests', None)}"
        )
    return config.num_requests


def _offset(config: WorkloadConfig, trace: Trace, n: int, rng: np.random.Generator) -> int:
    """The first trace row of this draw: the configured one, or a uniform draw with "random"."""
    if config.trace_offset == "random":
        return int(rng.integers(0, len(trace) - n + 1))
    return config.trace_offset


def _load_trace(config: WorkloadConfig) -> Trace:
    """The configured trace, read once per file version (RL resets call this every episode)."""
    path = trace_path(config.trace)
    stat = os.stat(path)
    trace = _read_trace_cached(
        os.path.abspath(path), stat.st_mtime_ns, stat.st_size,
        config.trace_format, config.trace_zero_tokens,
    )
    if config.arrival == "trace" and trace.arrived_at is None:
        raise WorkloadConfigError(
            f"arrival='trace' needs time stamps but {config.trace} is a length-only "
            f"({trace.format}) trace"
        )
    return trace


@functools.lru_cache(maxsize=4)
def _read_trace_cached(path: str, mtime_ns: int, size: int, fmt: str, zero_tokens: str) -> Trace:
    """:func:`read_trace` with read-only arrays, cached by path and file version."""
    trace = read_trace(path, fmt, zero_tokens)
    arrays = (trace.arrived_at, trace.num_prefill_tokens, trace.num_decode_tokens, trace.line_numbers)
    for array in arrays:
        if array is not None:
            array.flags.writeable = False
    if trace.num_zero_rows:
        action = "dropped" if zero_tokens == "drop" else "raised to 1 token"
        warnings.warn(
            f"{path}: {trace.num_zero_rows} rows with 0 prompt or output tokens were {action} "
            f"({setting('trace_zero_tokens', zero_tokens)})",
            stacklevel=2,
        )
    return trace


# ----------------------------------------------------------------------------------------------
# Validation


def _fail(field: str, problem: str) -> None:
    raise WorkloadConfigError(f"WorkloadConfig.{field}: {problem}")


def _check_choices(config: WorkloadConfig) -> None:
    """String fields must be one of their known values."""
    for field, choices in (
        ("arrival", ARRIVALS),
        ("lengths", LENGTHS),
        ("trace_format", FORMAT_CHOICES),
        ("trace_zero_tokens", ZERO_TOKEN_POLICIES),
    ):
        value = getattr(config, field)
        if value not in choices:
            _fail(field, f"must be one of {', '.join(choices)}; got {value!r}")


def _check_numbers(config: WorkloadConfig) -> None:
    """Counts, rates and factors must be positive numbers of the right kind."""
    if config.num_requests is not None and not _is_int(config.num_requests, minimum=1):
        _fail("num_requests", f"must be an integer >= 1 or None; got {config.num_requests!r}")
    positive = ("qps", "cv", "time_scale", "prefill_scale", "decode_scale", "prefill_to_decode_ratio")
    for field in positive:
        value = getattr(config, field)
        if not (_is_real(value) and value > 0):
            _fail(field, f"must be a finite number > 0; got {value!r}")
    counts = (("prefill_tokens", 1), ("decode_tokens", 1), ("min_tokens", 1), ("max_tokens", 2))
    for field, minimum in counts:
        if not _is_int(getattr(config, field), minimum):
            _fail(field, f"must be an integer >= {minimum}; got {getattr(config, field)!r}")
    if not (_is_real(config.zipf_theta) and 0 <= config.zipf_theta < 1):
        _fail("zipf_theta", f"must be in [0, 1); got {config.zipf_theta!r}")
    offset = config.trace_offset
    if offset != "random" and not _is_int(offset, minimum=0):
        _fail("trace_offset", f"must be an integer >= 0 or 'random'; got {offset!r}")
    for field in ("poisson_clip", "zipf_scramble", "allow_beyond_context"):
        if not isinstance(getattr(config, field), bool):
            _fail(field, f"must be true or false; got {getattr(config, field)!r}")


def _check_trace_fields(config: WorkloadConfig) -> None:
    """A trace file must exist when a trace is used; None requests need a trace.

    Trace fields (``trace``, ``time_scale``; ``*_scale`` also apply to lengths=default) are
    ignored, not rejected, when nothing uses them, so that variants derived with ``dataclasses.replace``
    (e.g. a saturation probe with ``arrival="static"``) stay valid.
    """
    if uses_trace(config):
        if not config.trace:
            _fail(
                "trace",
                f"a trace file is needed for arrival={config.arrival!r}, lengths={config.lengths!r}",
            )
        path = trace_path(config.trace)
        if os.path.isdir(path):
            _fail("trace", f"{config.trace} is a directory, not a trace file")
        if not os.path.isfile(path):
            shipped = ", ".join(SAMPLE_TRACES)
            _fail("trace", f"file not found: {config.trace} (shipped traces, by name: {shipped})")
    elif config.num_requests is None:
        _fail("num_requests", "None means 'every trace row', but no trace is used")


def _check_synthetic_lengths(config: WorkloadConfig) -> None:
    """Fixed/uniform/zipf settings must give requests of >= 1 prompt and output token that fit
    in ``max_tokens`` (Vidur asserts the former and silently breaks on the latter)."""
    fixed_total = config.prefill_tokens + config.decode_tokens
    if config.lengths == "fixed" and fixed_total > config.max_tokens:
        _fail(
            "prefill_tokens",
            f"prefill_tokens + decode_tokens = {fixed_total} exceeds max_tokens={config.max_tokens}",
        )
    if config.lengths not in ("uniform", "zipf"):
        return
    upper = config.max_tokens_uniform
    if upper is not None and not (_is_int(upper, config.min_tokens) and upper <= config.max_tokens):
        _fail(
            "max_tokens_uniform",
            f"must be None or an integer in [min_tokens={config.min_tokens}, "
            f"max_tokens={config.max_tokens}]; got {upper!r}",
        )
    if config.min_tokens > _synthetic_upper(config):
        _fail("min_tokens", f"{config.min_tokens} exceeds the largest total {_synthetic_upper(config)}")
    prefill, decode = _smallest_split(config)
    if prefill < 1 or decode < 1:
        _fail(
            "min_tokens",
            f"a total of {config.min_tokens} tokens at prefill_to_decode_ratio="
            f"{config.prefill_to_decode_ratio:g} gives {prefill} prompt / {decode} output tokens; "
            "both must be >= 1",
        )


def _check_sessions(config: WorkloadConfig) -> None:
    """Sessions need a fixed request count and poisson or static arrivals; their knobs are
    checked by :meth:`SessionConfig.validate`, re-raised under this field's name."""
    if config.sessions is None:
        return
    if config.arrival not in ("poisson", "static"):
        _fail("arrival", f"sessions need arrival='poisson' or 'static'; got {config.arrival!r}")
    if config.num_requests is None:
        _fail("num_requests", "sessions need a number of requests (None means every trace row)")
    try:
        session_config(config).validate(config.max_tokens)
    except SessionConfigError as error:
        _fail(f"sessions.{error.field}", str(error))


def _smallest_split(config: WorkloadConfig) -> tuple[int, int]:
    """(prompt, output) of the smallest total, by the uniform or zipf split rule."""
    total = float(config.min_tokens)
    if config.lengths == "uniform":
        decode = math.ceil(total / (1.0 + config.prefill_to_decode_ratio))
        return int(total - decode), decode
    decode = total / (1.0 + config.prefill_to_decode_ratio)
    return int(total - decode), int(decode)


def _is_int(value: object, minimum: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= minimum


def _is_real(value: object) -> bool:
    is_number = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    return is_number and math.isfinite(value)


# ----------------------------------------------------------------------------------------------
# Descriptions


def _describe_arrivals(config: WorkloadConfig) -> str:
    if config.arrival == "poisson":
        clip = ", gaps capped at 3/qps as in Vidur" if config.poisson_clip else ""
        return f"Poisson {config.qps:g} req/s{clip}"
    if config.arrival == "gamma":
        return f"gamma {config.qps:g} req/s, CV {config.cv:g}"
    if config.arrival == "static":
        return "all at t=0"
    return f"time stamps of {config.trace} x{config.time_scale:g}"


def _describe_scales(config: WorkloadConfig) -> str:
    """The length scales, when either differs from 1."""
    if config.prefill_scale == 1.0 and config.decode_scale == 1.0:
        return ""
    return f", prompts x{config.prefill_scale:g}, outputs x{config.decode_scale:g}"


def _describe_lengths(config: WorkloadConfig) -> str:
    cap = f", totals cut to {config.max_tokens} tokens"
    ratio = f"prompt:output {config.prefill_to_decode_ratio:g}:1"
    if config.lengths == "default":
        stats = default_length_model().trace_stats
        return (
            f"conversation-trace fit (prompt mean {stats['prompt']['mean']:.0f} / median "
            f"{stats['prompt']['median']:.0f}, output mean {stats['decode']['mean']:.0f} / "
            f"median {stats['decode']['median']:.0f}){_describe_scales(config)}{cap}"
        )
    if config.lengths == "fixed":
        return f"fixed {config.prefill_tokens} prompt + {config.decode_tokens} output tokens"
    if config.lengths == "uniform":
        return f"uniform totals in [{config.min_tokens}, {_synthetic_upper(config)}], {ratio}"
    if config.lengths == "zipf":
        scramble = ", scrambled" if config.zipf_scramble else ""
        return (
            f"Zipf(theta={config.zipf_theta:g}{scramble}) totals in "
            f"[{config.min_tokens}, {_synthetic_upper(config)}], {ratio}"
        )
    return (
        f"shuffled rows of {config.trace}, prompts x{config.prefill_scale:g}, "
        f"outputs x{config.decode_scale:g}{cap}"
    )

