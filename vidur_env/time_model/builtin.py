"""The builtin execution-time source: coefficients fitted to Vidur's real profiling data.

The coefficients live in ``vidur_env/data/time_model_coefficients.json`` (written by
benchmarks/fit_time_model.py), so the package needs no profiling files at run time.

- Linear ops: a piecewise-linear curve in tokens per (device, model, TP), continued linearly
  beyond its last knot. Llama-3 models on H100 have no profile; their curves are the A100
  ones times the H100/A100 ratio, at the same TP, of the nearest-sized model profiled on both
  (Llama-3-8B <- Llama-2-7B; Llama-3-70B <- Llama-2-70B, identical layer shapes). The JSON
  entry's ``source`` says so and :meth:`BuiltinTimeModel.describe` reports it.
- All-reduce: a piecewise-linear curve in message bytes (tokens * hidden * 2) per network and TP.
- Attention is fitted on real Llama-2-7B/A100/TP1 points and scaled: decode's bandwidth term by
  the KV bytes per token per layer per worker and by HBM bandwidth, its per-sequence term by
  HBM bandwidth; prefill by the query width per worker (q heads * head dim) and by the device's
  measured large-batch compute ratio. These transfers are assumptions, not measurements.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..hardware import DeviceSpec, ModelSpec, get_device, get_model
from .base import DEFAULT_KEYING, ExecutionTimeModel, VidurOverheads
from .errors import TimeModelError
from .interpolation import Curve1D

__all__ = ["COEFFICIENTS_PATH", "BuiltinTimeModel", "builtin_time_model", "load_coefficients"]

COEFFICIENTS_PATH = Path(__file__).resolve().parent.parent / "data" / "time_model_coefficients.json"


@lru_cache(maxsize=4)
def load_coefficients(path: Path = COEFFICIENTS_PATH) -> dict[str, Any]:
    """The fitted coefficient document (read once per path)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TimeModelError(f"builtin time-model coefficients not found: {path}") from None
    except json.JSONDecodeError as error:
        raise TimeModelError(f"{path}: not valid JSON ({error})") from None


def _presets(linear: dict[str, Any]) -> str:
    return "; ".join(
        f"{device}: {model} ({', '.join(sorted(tps))})" for device, models in sorted(linear.items())
        for model, tps in sorted(models.items())
    )


class BuiltinTimeModel(ExecutionTimeModel):
    """Execution time from the fitted coefficients (see the module docstring for the scaling rules).

    :param model: the served model.
    :param device: the accelerator.
    :param tp: tensor-parallel degree.
    :param network_device: network profile for all-reduce; defaults to ``device.network``.
    :param coefficients: an already loaded coefficient document; defaults to the packaged one.
    :param kwargs: keying, pipeline_stages, kv_granularity, overheads, as :class:`ExecutionTimeModel`.
    """

    def __init__(
        self,
        model: ModelSpec,
        device: DeviceSpec,
        tp: int,
        *,
        network_device: str | None = None,
        coefficients: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, device, tp, **kwargs)
        document = load_coefficients() if coefficients is None else coefficients
        self.network_device = network_device or device.network
        entry = self._linear_entry(document["linear_ops"])
        self.linear_source = entry["source"]
        self._linear = Curve1D(entry["knots"], entry["ms"], label=f"linear ops {model.name}", extrapolate=True)
        self._all_reduce = self._all_reduce_curve(document["all_reduce"]) if tp > 1 else None
        self._init_attention(document)

    def _linear_entry(self, linear: dict[str, Any]) -> dict[str, Any]:
        entry = linear.get(self.device.name, {}).get(self.model.time_model_name, {}).get(f"tp{self.tp}")
        if entry is None:
            raise TimeModelError(
                f"no builtin linear-op coefficients for {self.model.name} on {self.device.name} at TP{self.tp}; "
                f"available: {_presets(linear)}"
            )
        return entry

    def _all_reduce_curve(self, all_reduce: dict[str, Any]) -> Curve1D:
        entry = all_reduce.get(self.network_device, {}).get(f"tp{self.tp}")
        if entry is None:
            available = "; ".join(f"{net}: {', '.join(sorted(tps))}" for net, tps in sorted(all_reduce.items()))
            raise TimeModelError(
                f"no builtin all-reduce coefficients for network {self.network_device!r} at TP{self.tp}; "
                f"available: {available}"
            )
        return Curve1D(entry["bytes"], entry["ms"], label=f"all_reduce {self.network_device}", extrapolate=True)

    def _init_attention(self, document: dict[str, Any]) -> None:
        """Scale the reference attention coefficients to this model, TP and device."""
        decode, prefill = document["decode_attention"], document["prefill_attention"]
        compute_ratio = document["device_compute_ratio"].get(self.device.name)
        if compute_ratio is None:
            raise TimeModelError(
                f"no builtin attention scaling for device {self.device.name!r}; "
                f"available: {', '.join(sorted(document['device_compute_ratio']))}"
            )
        bandwidth = decode["reference_hbm_tb_s"] / self.device.hbm_tb_s
        kv_bytes = self.model.kv_bytes_per_token_per_layer(self.tp) / decode["reference_kv_bytes_per_token_per_layer"]
        self._decode_a = decode["a_ms"]
        self._decode_b = decode["b_ms_per_batch_kv"] * kv_bytes * bandwidth
        self._decode_c = decode["c_ms_per_kv"] * bandwidth
        q_width = self.model.q_heads_per_worker(self.tp) * self.model.head_dim / prefill["reference_q_width"]
        scale = q_width * compute_ratio
        self._prefill_c = prefill["c_ms_per_token"] * scale
        self._prefill_b1 = prefill["b1_ms_per_token_sq"] * scale
        self._prefill_b2 = prefill["b2_ms_per_token_kv"] * scale

    def linear_ms(self, tokens: int) -> float:
        return self._linear(tokens)

    def all_reduce_ms(self, tokens: int) -> float:
        if self._all_reduce is None:
            return 0.0
        return self._all_reduce(tokens * self.model.hidden_size * 2)

    def decode_attention_ms(self, batch_size: int, kv: int) -> float:
        return self._decode_a + (self._decode_b * batch_size + self._decode_c) * kv

    def prefill_attention_ms(self, kv: int, chunk: int) -> float:
        return chunk * (self._prefill_c + self._prefill_b1 * chunk + self._prefill_b2 * kv)

    def describe(self) -> str:
        derived = " (linear ops derived by device ratio)" if self.linear_source.startswith("derived") else ""
        return f"builtin time model (fitted to Vidur profiling){derived}: {self._describe_setup()}"


def builtin_time_model(
    model: ModelSpec | str,
    device: DeviceSpec | str,
    tp: int,
    keying: str = DEFAULT_KEYING,
    *,
    pipeline_stages: int = 1,
    network_device: str | None = None,
    kv_granularity: int | None = None,
    overheads: VidurOverheads = VidurOverheads(),
) -> BuiltinTimeModel:
    """Execution-time model from the packaged fitted coefficients; names or specs accepted."""
    return BuiltinTimeModel(
        get_model(model),
        get_device(device),
        tp,
        network_device=network_device,
        keying=keying,
        pipeline_stages=pipeline_stages,
        kv_granularity=kv_granularity,
        overheads=overheads,
    )
