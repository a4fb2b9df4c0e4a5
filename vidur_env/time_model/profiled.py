"""The profiled execution-time source: Vidur-format CSVs answered by interpolation.

Files are found where Vidur looks for them (its ``*_input_file`` defaults), under one root:
``<dir>/compute/<device>/<model>/mlp.csv`` and ``attention.csv``, and
``<dir>/network/<network_device>/all_reduce.csv`` (read only when TP > 1). Rows are filtered
as Vidur filters them (model shape, ``num_tensor_parallel_workers == tp``; all-reduce rows
with ``num_workers == devices_per_node == tp``). Instead of Vidur's random forests, lookups
interpolate linearly in tokens (linear ops, all-reduce) and bilinearly over (batch, KV) for
decode and (chunk, KV) for prefill attention.

Outside the profiled grid (``extrapolate=True``, the default) a lookup takes the value at the
grid's nearest end (``above_grid="clamp"``, the default), as Vidur's random forests do: a forest
is flat beyond its training data. Every such lookup is counted
(:attr:`ProfiledTimeModel.out_of_grid_lookups`) so that reports can say how much rests on
extrapolation. Vidur's own data needs this: its attention.csv starts at prefill chunk 64 and ends
at KV 4032, so Sarathi's small chunks and 4096-token requests fall outside it (Vidur's random
forests predict there silently), and the 0.0.26 build keys a whole prompt at KV = its own length,
far above the grid. ``above_grid="linear"`` continues the last segment above the grid instead
(measured against Vidur 0.0.26's own predictions on its vLLM trajectory: prefill-carrying
iterations +4.2% with it, +0.4% with the clamp; ``benchmarks/fidelity_vs_vidur.py``).
``extrapolate=False`` raises :class:`OutOfGridError` instead.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..hardware import DeviceSpec, ModelSpec, get_device, get_model
from .base import DEFAULT_KEYING, ExecutionTimeModel, VidurOverheads
from .errors import TimeModelError
from .interpolation import ABOVE_GRID, Curve1D, RowGrid2D
from .profiles import RowCurves, all_reduce_profile, attention_profile, linear_ops_profile, profile_paths

__all__ = ["ProfiledTimeModel", "profiled_time_model"]


def _row_grid(rows: RowCurves, *, op: str, row_axis: str, path: Path, extrapolate: bool, above: str) -> RowGrid2D:
    curves = {
        row: Curve1D(
            xs, ys, label=f"{op} kv_cache_size at {row_axis}={row} ({path})", extrapolate=extrapolate, above=above
        )
        for row, (xs, ys) in rows.items()
    }
    return RowGrid2D(curves, label=f"{op} {row_axis} ({path})", extrapolate=extrapolate, above=above)


class ProfiledTimeModel(ExecutionTimeModel):
    """Execution time interpolated from a directory of Vidur-format profiles.

    :param profiling_dir: root holding ``compute/`` and ``network/`` as Vidur lays them out.
    :param model: the served model; its name is the compute folder (``meta-llama/Llama-2-7b-hf``).
    :param device: the accelerator; its name is the compute folder (``a100``).
    :param tp: tensor-parallel degree.
    :param network_device: network folder for all_reduce.csv; defaults to ``device.network``.
    :param extrapolate: answer outside the grid (counted) instead of raising.
    :param above_grid: above the grid, ``"clamp"`` (the last value, as Vidur's random forests) or
        ``"linear"`` (the last segment continued); below it the first value is always taken.
    :param block_size: attention.csv rows are filtered on this KV block size, as in Vidur.
    :param kwargs: keying, pipeline_stages, kv_granularity, overheads, as :class:`ExecutionTimeModel`.
    """

    def __init__(
        self,
        profiling_dir: Path | str,
        model: ModelSpec,
        device: DeviceSpec,
        tp: int,
        *,
        network_device: str | None = None,
        extrapolate: bool = True,
        above_grid: str = "clamp",
        block_size: int = 16,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, device, tp, **kwargs)
        if above_grid not in ABOVE_GRID:
            raise TimeModelError(f"above_grid must be one of {', '.join(ABOVE_GRID)}, got {above_grid!r}")
        self.profiling_dir = Path(profiling_dir)
        self.network_device = network_device or device.network
        self.extrapolate, self.above_grid = extrapolate, above_grid
        paths = profile_paths(self.profiling_dir, device.name, model.time_model_name, self.network_device)
        tokens, ms = linear_ops_profile(paths["mlp"], model, tp)
        self._linear = Curve1D(
            tokens, ms, label=f"mlp num_tokens ({paths['mlp']})", extrapolate=extrapolate, above=above_grid
        )
        self._all_reduce = None
        if tp > 1:
            sizes, ms = all_reduce_profile(paths["all_reduce"], tp)
            self._all_reduce = Curve1D(
                sizes / (2 * model.hidden_size), ms,
                label=f"all_reduce num_tokens ({paths['all_reduce']})", extrapolate=extrapolate, above=above_grid,
            )
        decode, prefill = attention_profile(paths["attention"], model, tp, block_size)
        attention = paths["attention"]
        self._decode = _row_grid(
            decode, op="attn_decode", row_axis="batch_size", path=attention, extrapolate=extrapolate, above=above_grid
        )
        self._prefill = _row_grid(
            prefill, op="attn_prefill", row_axis="prefill_chunk_size", path=attention, extrapolate=extrapolate,
            above=above_grid,
        )

    @property
    def out_of_grid_lookups(self) -> int:
        """Distinct lookups (times are memoised) answered outside the profiled grid."""
        curves = (self._linear, self._all_reduce, self._decode, self._prefill)
        return sum(curve.off_grid for curve in curves if curve is not None)

    def linear_ms(self, tokens: int) -> float:
        return self._linear(tokens)

    def all_reduce_ms(self, tokens: int) -> float:
        return 0.0 if self._all_reduce is None else self._all_reduce(tokens)

    def decode_attention_ms(self, batch_size: int, kv: int) -> float:
        return self._decode(batch_size, kv)

    def prefill_attention_ms(self, kv: int, chunk: int) -> float:
        return self._prefill(chunk, kv)

    def describe(self) -> str:
        mode = f", off-grid lookups clamped below and {self.above_grid} above" if self.extrapolate else ", strict grid"
        return f"profiled time model ({self.profiling_dir}{mode}): {self._describe_setup()}"


def profiled_time_model(
    profiling_dir: Path | str,
    model: ModelSpec | str,
    device: DeviceSpec | str,
    tp: int,
    network_device: str | None = None,
    keying: str = DEFAULT_KEYING,
    *,
    extrapolate: bool = True,
    above_grid: str = "clamp",
    pipeline_stages: int = 1,
    kv_granularity: int | None = None,
    block_size: int = 16,
    overheads: VidurOverheads = VidurOverheads(),
) -> ProfiledTimeModel:
    """Execution-time model interpolating Vidur-format profiles under ``profiling_dir``; names or specs accepted."""
    return ProfiledTimeModel(
        profiling_dir,
        get_model(model),
        get_device(device),
        tp,
        network_device=network_device,
        extrapolate=extrapolate,
        above_grid=above_grid,
        block_size=block_size,
        keying=keying,
        pipeline_stages=pipeline_stages,
        kv_granularity=kv_granularity,
        overheads=overheads,
    )
