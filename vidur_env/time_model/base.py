"""The execution-time interface: how Vidur turns one batch into lookups and adds them up.

A source (fitted coefficients or profiling CSVs) only answers four per-layer questions in
milliseconds: linear ops at T tokens, one all-reduce of T tokens, decode attention at
(batch, KV) and prefill attention at (KV, chunk). :class:`ExecutionTimeModel` does the rest
the way Vidur's ``SklearnExecutionTimePredictor`` and ``ExecutionTime`` do:

per layer = linear(T8) + decode(n, kv) * (1 + GQA overhead if n > 1) + prefill part
            + 2 * (all_reduce(T8) + NCCL launch + skew * TP**1.25)   [TP > 1 only]
iteration = per layer * layers per pipeline stage, in seconds,

with T8 the batch's token count rounded up to a multiple of 8. Not counted, as in Vidur:
embedding, LM head, sampling and CPU overheads; the KV-cache save op (commented out in the
PyPI build; main adds it only when attention.csv has that column, and the shared data has
none); pipeline send/recv (no profile: the replica is one folded stage).

Keyings (``keying=``):

``"vidur"`` (default; Vidur main branch, what VIDUR_SEMANTICS.md describes)
    decode KV = floor(mean of the decodes' processed tokens) rounded up to 64; all prefills
    looked up once, as an equivalent prefill at (sum of each prior KV rounded up to 64,
    round(sqrt(sum of squared chunks))); the GQA overhead (x1.1) applies to decode and to
    prefill attention when that part holds more than one request. A request is a prefill until
    its whole prompt is processed, so a one-token last chunk is a prefill (chunk 1), as main's
    predictor decides by ``is_prefill_complete``.
``"vidur_pypi"`` (the PyPI 0.0.26 build)
    KV counts the tokens of this iteration too (processed + q) and is rounded up to 256 (its
    ``kv_cache_prediction_granularity`` default); decodes are the requests with exactly one
    q token (so a one-token prefill chunk counts as a decode); one lookup per prefill at
    (KV, chunk rounded up to 32), summed; GQA overhead on decode only. Its profiler records
    the *prior* KV, so a prefill's own tokens are counted twice; reproduced as is (a lone
    4096-token prefill costs ~20% more than under ``"vidur"`` with the builtin source).

Both keyings share the TP rule: NCCL CPU launch 0.02 ms + skew 0.0 ms * TP**1.25 per all-reduce.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from ..hardware import DeviceSpec, ModelSpec
from .errors import TimeModelError

__all__ = ["DEFAULT_KEYING", "KEYINGS", "ExecutionTimeModel", "VidurOverheads"]

KEYINGS = {"vidur": 64, "vidur_pypi": 256}
"""Supported keyings and their default KV rounding granularity (tokens): the one list that
``ClusterConfig.keying`` and ``--keying`` choose from."""
DEFAULT_KEYING = "vidur"
"""Vidur's main branch, what VIDUR_SEMANTICS.md describes."""

PYPI_PREFILL_CHUNK_MULTIPLE = 32
"""The PyPI build rounds each prefill chunk up to a multiple of 32 before its lookup."""


@dataclass(frozen=True)
class VidurOverheads:
    """Vidur's fixed additive/multiplicative corrections (its predictor config defaults).

    :param attention_decode_batching_overhead_fraction: extra decode-attention time for GQA
        models when more than one decode is batched.
    :param attention_prefill_batching_overhead_fraction: the same for prefill attention
        (main branch only; the PyPI build has none).
    :param nccl_cpu_launch_overhead_ms: added to every all-reduce.
    :param nccl_cpu_skew_overhead_per_device_ms: added to every all-reduce times TP**1.25.
    """

    attention_decode_batching_overhead_fraction: float = 0.1
    attention_prefill_batching_overhead_fraction: float = 0.1
    nccl_cpu_launch_overhead_ms: float = 0.02
    nccl_cpu_skew_overhead_per_device_ms: float = 0.0


def _round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


class ExecutionTimeModel(ABC):
    """Per-iteration execution time of one replica (one folded pipeline stage).

    Subclasses supply the per-layer millisecond lookups; this class keys batches the way
    Vidur does and memoises the total on the rounded key, so repeated batch shapes cost one
    dict lookup.

    :param model: the served model.
    :param device: the accelerator (used for descriptions; sources use it to pick data).
    :param tp: tensor-parallel degree.
    :param keying: ``"vidur"`` (main branch) or ``"vidur_pypi"``; see the module docstring.
    :param pipeline_stages: layers are split evenly; the time is that of one stage.
    :param kv_granularity: KV rounding in tokens; None takes the keying's default (64 / 256).
    :param overheads: Vidur's fixed corrections.
    :param max_cache_entries: the memo is cleared when it grows past this many keys (about 250
        bytes each; a 64-replica run adds a new key for every two requests or so, and recent
        keys are the ones hit, so 2**18 bounds it at ~65 MB at no measured cost in speed).
    """

    def __init__(
        self,
        model: ModelSpec,
        device: DeviceSpec,
        tp: int,
        *,
        keying: str = DEFAULT_KEYING,
        pipeline_stages: int = 1,
        kv_granularity: int | None = None,
        overheads: VidurOverheads = VidurOverheads(),
        max_cache_entries: int = 1 << 18,
    ) -> None:
        if keying not in KEYINGS:
            raise TimeModelError(f"unknown keying {keying!r}; valid: {', '.join(KEYINGS)}")
        model.check_parallelism(tp, pipeline_stages)
        granularity = KEYINGS[keying] if kv_granularity is None else kv_granularity
        if not isinstance(granularity, int) or granularity <= 0:
            raise TimeModelError(f"kv_granularity must be a positive int, got {kv_granularity!r}")
        self.model, self.device, self.tp = model, device, tp
        self.keying, self.pipeline_stages, self.kv_granularity = keying, pipeline_stages, granularity
        self.overheads = overheads
        self._seconds_per_layer_ms = (model.num_layers // pipeline_stages) / 1000.0
        self._decode_overhead = overheads.attention_decode_batching_overhead_fraction if model.is_gqa else 0.0
        prefill_overhead = overheads.attention_prefill_batching_overhead_fraction
        self._prefill_overhead = prefill_overhead if model.is_gqa and keying == "vidur" else 0.0
        self._all_reduce_extra_ms = (
            overheads.nccl_cpu_launch_overhead_ms + overheads.nccl_cpu_skew_overhead_per_device_ms * tp**1.25
        )
        self._decode_kv_offset = 1 if keying == "vidur_pypi" else 0
        self._mixed_key = self._mixed_key_pypi if keying == "vidur_pypi" else self._mixed_key_vidur
        self._max_cache_entries = max_cache_entries
        self._cache: dict[tuple, float] = {}
        self._token_ms_cache: dict[int, float] = {}

    # ----------------------------------------------------------------- source lookups (ms per layer)
    @abstractmethod
    def linear_ms(self, tokens: int) -> float:
        """All linear ops of one layer (QKV/O projections, MLP, norms, rope, add) at ``tokens`` tokens."""

    @abstractmethod
    def all_reduce_ms(self, tokens: int) -> float:
        """One all-reduce of ``tokens`` hidden vectors across the TP workers (without NCCL overheads)."""

    @abstractmethod
    def decode_attention_ms(self, batch_size: int, kv: int) -> float:
        """Decode attention of ``batch_size`` requests with mean KV length ``kv`` (no GQA overhead)."""

    @abstractmethod
    def prefill_attention_ms(self, kv: int, chunk: int) -> float:
        """Prefill attention of a ``chunk``-token chunk over ``kv`` prior tokens (no GQA overhead)."""

    @abstractmethod
    def describe(self) -> str:
        """One line naming the source, model, device, TP and keying, for metrics and reports."""

    @property
    def out_of_grid_lookups(self) -> int:
        """Lookups answered outside measured data by extrapolation; 0 for sources without a grid."""
        return 0

    def _describe_setup(self) -> str:
        stages = f", PP{self.pipeline_stages} (one stage)" if self.pipeline_stages > 1 else ""
        return f"{self.model.name} on {self.device.name}, TP{self.tp}{stages}, keying={self.keying}"

    # ----------------------------------------------------------------- hot path
    def iteration_time(
        self,
        num_decodes: int,
        decode_kv_sum: int,
        prefill_chunks: tuple[int, ...],
        prefill_kv: tuple[int, ...],
    ) -> float:
        """Seconds for one batch iteration.

        num_decodes requests each process 1 token; decode_kv_sum is the sum over those decode
        requests of num_processed_tokens BEFORE this iteration; prefill_chunks[i] is the number
        of prompt tokens prefilled for prefill request i in this iteration and prefill_kv[i] its
        num_processed_tokens before it.
        """
        if prefill_chunks:
            key = self._mixed_key(num_decodes, decode_kv_sum, prefill_chunks, prefill_kv)
        elif num_decodes > 0:
            granularity = self.kv_granularity
            mean_kv = decode_kv_sum // num_decodes + self._decode_kv_offset
            key = (num_decodes, (mean_kv + granularity - 1) // granularity * granularity)
        else:
            raise TimeModelError("empty batch: no decodes and no prefill chunks")
        seconds = self._cache.get(key)
        if seconds is None:
            seconds = self._evaluate(key)
        return seconds

    def decode_run_time(self, num_decodes: int, decode_kv_sum: int) -> tuple[float, int]:
        """Seconds of a decode-only iteration, and for how many consecutive such iterations
        (each adding one token to every decode) that time stays the same.

        The time only changes when the rounded mean KV key does, once per ``kv_granularity``
        iterations, so a run of decode iterations needs one lookup per key.
        """
        granularity = self.kv_granularity
        mean_kv = decode_kv_sum // num_decodes + self._decode_kv_offset
        key_kv = (mean_kv + granularity - 1) // granularity * granularity
        return self.iteration_time(num_decodes, decode_kv_sum, (), ()), key_kv - mean_kv + 1

    def _mixed_key_vidur(self, num_decodes: int, decode_kv_sum: int, chunks: tuple, kvs: tuple) -> tuple:
        """Main branch: one equivalent prefill at (sum of rounded KVs, round(sqrt(sum of squares)))."""
        granularity = self.kv_granularity
        decode_kv = 0
        if num_decodes:
            decode_kv = (decode_kv_sum // num_decodes + granularity - 1) // granularity * granularity
        if len(chunks) == 1 and len(kvs) == 1:  # the common case, without the loop
            chunk = chunks[0]
            kv = (kvs[0] + granularity - 1) // granularity * granularity
            return ((num_decodes + chunk + 7) // 8 * 8, num_decodes, decode_kv, kv, chunk, False)
        if len(chunks) != len(kvs):
            raise TimeModelError(f"prefill_chunks has {len(chunks)} entries but prefill_kv has {len(kvs)}")
        tokens, squares, kv_total = num_decodes, 0, 0
        for chunk, kv in zip(chunks, kvs):
            if chunk <= 0:
                raise TimeModelError(f"prefill chunk sizes must be positive, got {chunks}")
            tokens += chunk
            squares += chunk * chunk
            kv_total += (kv + granularity - 1) // granularity * granularity
        return ((tokens + 7) // 8 * 8, num_decodes, decode_kv, kv_total, round(squares**0.5), True)

    def _mixed_key_pypi(self, num_decodes: int, decode_kv_sum: int, chunks: tuple, kvs: tuple) -> tuple:
        """PyPI build: KV = processed + q; one-token chunks are decodes; one lookup per prefill."""
        if len(chunks) != len(kvs):
            raise TimeModelError(f"prefill_chunks has {len(chunks)} entries but prefill_kv has {len(kvs)}")
        granularity = self.kv_granularity
        tokens, decodes, decode_kv_total = num_decodes, num_decodes, decode_kv_sum + num_decodes
        prefills = []
        for chunk, kv in zip(chunks, kvs):
            if chunk <= 0:
                raise TimeModelError(f"prefill chunk sizes must be positive, got {chunks}")
            tokens += chunk
            if chunk == 1:
                decodes += 1
                decode_kv_total += kv + 1
            else:
                prefills.append((_round_up(kv + chunk, granularity), _round_up(chunk, PYPI_PREFILL_CHUNK_MULTIPLE)))
        decode_kv = _round_up(decode_kv_total // decodes, granularity) if decodes else 0
        if not prefills:
            return (decodes, decode_kv)
        return ((tokens + 7) // 8 * 8, decodes, decode_kv, tuple(sorted(prefills)))

    # ----------------------------------------------------------------- cache misses
    def _evaluate(self, key: tuple) -> float:
        """Compose the per-layer lookups of one rounded key, convert to seconds and memoise."""
        if len(key) == 2:
            num_decodes, decode_kv = key
            layer_ms = self._token_ms(_round_up(num_decodes, 8)) + self._decode_ms(num_decodes, decode_kv)
        elif len(key) == 6:
            tokens, num_decodes, decode_kv, kv_total, chunk, several = key
            if chunk <= 0:
                raise TimeModelError(f"prefill chunk sizes must be positive, got {chunk}")
            prefill = self.prefill_attention_ms(kv_total, chunk) * (1.0 + self._prefill_overhead * several)
            layer_ms = self._token_ms(tokens) + self._decode_ms(num_decodes, decode_kv) + prefill
        else:
            tokens, num_decodes, decode_kv, prefills = key
            prefill = sum(self.prefill_attention_ms(kv, chunk) for kv, chunk in prefills)
            layer_ms = self._token_ms(tokens) + self._decode_ms(num_decodes, decode_kv) + prefill
        seconds = layer_ms * self._seconds_per_layer_ms
        if len(self._cache) >= self._max_cache_entries:
            self._cache.clear()
        self._cache[key] = seconds
        return seconds

    def _decode_ms(self, num_decodes: int, decode_kv: int) -> float:
        if num_decodes == 0:
            return 0.0
        overhead = 1.0 + self._decode_overhead if num_decodes > 1 else 1.0
        return self.decode_attention_ms(num_decodes, decode_kv) * overhead

    def _token_ms(self, tokens: int) -> float:
        """Everything that depends only on the rounded token count: linear ops and the two all-reduces."""
        layer_ms = self._token_ms_cache.get(tokens)
        if layer_ms is None:
            layer_ms = self.linear_ms(tokens)
            if self.tp > 1:
                layer_ms += 2.0 * (self.all_reduce_ms(tokens) + self._all_reduce_extra_ms)
            self._token_ms_cache[tokens] = layer_ms
        return layer_ms
