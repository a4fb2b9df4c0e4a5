"""The forest time source: Vidur-format profiles answered by random forests, as Vidur main does.

Vidur main does not interpolate its profiles: it fits one scikit-learn ``RandomForestRegressor``
per op (each linear op on ``num_tokens``; decode attention on ``(batch_size, kv_cache_size)``;
prefill attention on ``(kv_cache_size, prefill_chunk_size**2)``; all-reduce on the message size
in tokens) and sums the predictions. A forest smooths the steps a GPU profile has (the linear
ops jump 40% between 128 and 136 tokens on Vidur's A100 data) where interpolation keeps them,
and near saturation that difference is visible:
at 87% load under vLLM, interpolated profiles put mean TTFT 6.7% and p99 TTFT 13.7% above a
Vidur main run, forests fitted here (seed 0) 0.5% and 1.1%; seeds 0-4 span -0.1% to +1.2%
(mean) and -0.5% to +5.3% (p99), the forests' own randomness, which moves Vidur's unseeded fits
as much (``benchmarks/fidelity_vs_vidur.py``, ``benchmarks/forest_spread.py``). So this is the default source for a
profiling directory; ``profile_fit="interpolate"`` keeps the interpolating source.

What differs from Vidur, and why:

* Hyperparameters are fixed (:data:`FOREST_PARAMS`, one point of Vidur's grid) instead of
  Vidur's 27-point grid search with 10-fold CV per op, which takes about 30 minutes per fit on
  two cores; measured on Vidur's A100 data, the latencies of fits with these parameters fall
  inside the spread between Vidur's own cold fits (``benchmarks/forest_spread.py``).
* The forests are seeded (``seed``), so a run is reproducible; Vidur fits without a seed, so
  two cold Vidur caches differ (its p99 TTFT at high vLLM load moves by up to 7% between fits).
* With ``keying="vidur_pypi"`` prefill attention is fitted on the chunk, not its square, as
  the PyPI 0.0.26 build fits it.
* Each forest is turned into the exact table of its constant pieces (:class:`ForestTable`),
  answered at any key, not predicted on a fixed grid; Vidur main's grid stops at 4096 tokens.

Fitting takes a few seconds per (model, device, TP); fitted tables are kept for the process, so
every replica and every environment built from the same files shares one fit.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import setting
from ..hardware import DeviceSpec, ModelSpec, get_device, get_model
from .base import ExecutionTimeModel
from .errors import OutOfGridError, TimeModelError
from .forest_table import ForestTable
from .profiles import Rows, all_reduce_rows, attention_rows, linear_op_rows, profile_paths

__all__ = ["FOREST_PARAMS", "ForestTimeModel", "forest_time_model"]

FOREST_PARAMS = {"n_estimators": 250, "max_depth": 32, "min_samples_split": 2}
"""The forests' hyperparameters: a point of Vidur's grid (n_estimators 250/500/750, max_depth
8/16/32, min_samples_split 2/5/10), fixed instead of searched."""


def _forest(rows: Rows, seed: int) -> Any:
    """One fitted forest on ``rows`` (features as float32, as scikit-learn stores them)."""
    try:
        from sklearn.ensemble import RandomForestRegressor
    except ImportError:
        raise TimeModelError(
            "the forest time source needs scikit-learn (pip install scikit-learn), or use "
            f"{setting('profile_fit', 'interpolate')}"
        ) from None
    features, target = rows
    return RandomForestRegressor(**FOREST_PARAMS, random_state=seed, n_jobs=-1).fit(features.astype(np.float32), target)


def _table(rows_per_forest: list[Rows], seed: int, label: str) -> ForestTable:
    """The summed forests fitted on each of ``rows_per_forest`` (same features), tabulated."""
    features = np.vstack([rows[0] for rows in rows_per_forest])
    forests = [_forest(rows, seed) for rows in rows_per_forest]
    return ForestTable(forests, lows=features.min(axis=0), highs=features.max(axis=0), label=label)


@lru_cache(maxsize=16)
def _fitted_tables(
    files: tuple[Path, Path, Path], stamps: tuple[tuple[int, int], ...], model: ModelSpec, tp: int, block_size: int,
    seed: int, squared_chunk: bool,
) -> tuple[ForestTable, ForestTable, ForestTable, ForestTable | None]:
    """Linear, decode, prefill and (TP > 1) all-reduce tables, fitted once per files, shape and seed.

    ``stamps`` (size, mtime of each file) is only part of the key, so that an edited profile is
    refitted. ``squared_chunk``: prefill attention is fitted on the squared chunk (Vidur main)
    or on the chunk itself (the PyPI 0.0.26 build).
    """
    mlp, attention, all_reduce = files
    linear = _table(list(linear_op_rows(mlp, model, tp).values()), seed, f"linear ops at num_tokens ({mlp})")
    decode_rows, (prefill_features, prefill_ms) = attention_rows(attention, model, tp, block_size)
    decode = _table([decode_rows], seed, f"attn_decode at (batch_size, kv_cache_size) ({attention})")
    prefill_features = prefill_features.astype(np.float64)
    if squared_chunk:
        prefill_features[:, 1] **= 2
    chunk_feature = "prefill_chunk_size**2" if squared_chunk else "prefill_chunk_size"
    prefill = _table([(prefill_features, prefill_ms)], seed, f"attn_prefill at (kv_cache_size, {chunk_feature}) ({attention})")
    reduce = None
    if tp > 1:
        sizes, ms = all_reduce_rows(all_reduce, tp)
        reduce = _table([(sizes / (2 * model.hidden_size), ms)], seed, f"all_reduce at num_tokens ({all_reduce})")
    return linear, decode, prefill, reduce


def _stamp(path: Path) -> tuple[int, int]:
    try:
        info = os.stat(path)
    except OSError:
        return (-1, -1)  # the readers report the missing file
    return (info.st_size, info.st_mtime_ns)


class ForestTimeModel(ExecutionTimeModel):
    """Execution time from random forests fitted on a directory of Vidur-format profiles.

    :param profiling_dir: root holding ``compute/`` and ``network/`` as Vidur lays them out.
    :param model: the served model; its name is the compute folder.
    :param device: the accelerator; its name is the compute folder.
    :param tp: tensor-parallel degree.
    :param network_device: network folder for all_reduce.csv; defaults to ``device.network``.
    :param seed: the forests' ``random_state``.
    :param extrapolate: answer lookups outside the profiled range (the forests are flat there)
        and count them in :attr:`out_of_grid_lookups`, instead of raising :class:`OutOfGridError`.
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
        seed: int = 0,
        extrapolate: bool = True,
        block_size: int = 16,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, device, tp, **kwargs)
        self.profiling_dir, self.seed, self.extrapolate = Path(profiling_dir), seed, extrapolate
        paths = profile_paths(self.profiling_dir, device.name, model.time_model_name, network_device or device.network)
        files = (paths["mlp"], paths["attention"], paths["all_reduce"])
        stamps = tuple(_stamp(path) for path in files)
        self._squared_chunk = self.keying != "vidur_pypi"
        self._linear, self._decode, self._prefill, self._all_reduce = _fitted_tables(
            files, stamps, model, tp, block_size, seed, self._squared_chunk
        )
        self._off_grid = 0

    @property
    def out_of_grid_lookups(self) -> int:
        """Distinct lookups (times are memoised) answered outside the profiled range."""
        return self._off_grid

    def _lookup(self, table: ForestTable, *key: float) -> float:
        feature = table.outside(key)
        if feature is not None:
            if not self.extrapolate:
                raise OutOfGridError.outside(
                    table.label, key[feature], table.lows[feature], table.highs[feature],
                    where=f" (lookup at {', '.join(f'{v:g}' for v in key)})",
                    answer="is answered by the forests (flat beyond their data)",
                )
            self._off_grid += 1
        return table(*key)

    def linear_ms(self, tokens: int) -> float:
        return self._lookup(self._linear, tokens)

    def all_reduce_ms(self, tokens: int) -> float:
        return 0.0 if self._all_reduce is None else self._lookup(self._all_reduce, tokens)

    def decode_attention_ms(self, batch_size: int, kv: int) -> float:
        return self._lookup(self._decode, batch_size, kv)

    def prefill_attention_ms(self, kv: int, chunk: int) -> float:
        return self._lookup(self._prefill, kv, chunk * chunk if self._squared_chunk else chunk)

    def describe(self) -> str:
        mode = ", off-range lookups answered by the forests" if self.extrapolate else ", strict grid"
        return f"forest time model ({self.profiling_dir}, seed {self.seed}{mode}): {self._describe_setup()}"


def forest_time_model(
    profiling_dir: Path | str, model: ModelSpec | str, device: DeviceSpec | str, tp: int, **kwargs: Any
) -> ForestTimeModel:
    """Execution-time model of forests fitted on Vidur-format profiles under ``profiling_dir``;
    model and device by name or spec, keywords as :class:`ForestTimeModel`."""
    return ForestTimeModel(profiling_dir, get_model(model), get_device(device), tp, **kwargs)
