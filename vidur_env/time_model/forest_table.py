"""A fitted random forest turned into the exact table it is, so a lookup costs a bisect, not a predict.

A regression tree splits on ``x[feature] <= threshold`` and is constant on each cell those
thresholds cut, so a forest (a mean of trees), or a sum of forests on the same features, is
constant on the cells cut by the union of all their thresholds, per feature. Predicting once at
one point of every cell gives the whole function, exactly, inside the training range and beyond
it. This is why the forest time source can afford Vidur's random forests at simulation speed:
scikit-learn's ``predict`` costs milliseconds per call, a table lookup microseconds, and the
tables are small (a few hundred cuts per feature on Vidur's profiles).

scikit-learn compares features as float32 against float64 thresholds, so a lookup casts its key
to float32 first, as ``predict`` does, and each cell's representative point is a float32 in it.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import Any, Sequence

import numpy as np

from ..errors import setting
from .errors import TimeModelError

__all__ = ["MAX_CELLS", "ForestTable"]

MAX_CELLS = 1 << 22
"""Largest table built (32 MB of float64, a few seconds of ``predict``). Vidur's A100 profiles
need 41,000 cells; a table this large would come from thousands of distinct values on two
features, where the forests would take minutes to tabulate."""


def _cuts(forests: Sequence[Any], feature: int) -> np.ndarray:
    """Sorted distinct thresholds of every tree of every forest on one feature."""
    thresholds = [
        tree.tree_.threshold[tree.tree_.feature == feature] for forest in forests for tree in forest.estimators_
    ]
    return np.unique(np.concatenate(thresholds)) if thresholds else np.empty(0)


def _representatives(cuts: np.ndarray) -> np.ndarray:
    """One float32 per cell: cell i holds the x with cuts[i-1] < x <= cuts[i], the last cell x > cuts[-1].

    The largest float32 not above each cut lies in its cell whenever any float32 does; a cell
    no float32 falls in is never looked up, so its value does not matter.
    """
    below = cuts.astype(np.float32)
    below = np.where(below.astype(np.float64) > cuts, np.nextafter(below, np.float32(-np.inf)), below)
    top = np.float32(cuts[-1]) if len(cuts) else np.float32(0.0)
    top = np.nextafter(top, np.float32(np.inf)) if len(cuts) and float(top) <= cuts[-1] else top
    return np.append(below, top).astype(np.float32)


class ForestTable:
    """The sum of fitted scikit-learn forests over the same features, as a table of its cells.

    :param forests: fitted ``RandomForestRegressor`` objects with the same features (their
        predictions are added: Vidur sums its per-op forests into one layer time).
    :param lows: smallest training value of each feature (the profiled range starts there).
    :param highs: largest training value of each feature.
    :param label: op and feature names, e.g. ``"attn_decode (batch_size, kv_cache_size)"``.

    The table holds no state beyond its values: every model and replica fitted on the same
    files can share one.
    """

    def __init__(self, forests: Sequence[Any], *, lows: Sequence[float], highs: Sequence[float], label: str) -> None:
        if not forests:
            raise TimeModelError(f"{label}: no forests to tabulate")
        num_features = len(lows)
        cuts = [_cuts(forests, feature) for feature in range(num_features)]
        axes = [_representatives(c) for c in cuts]
        cells = int(np.prod([len(a) for a in axes]))
        if cells > MAX_CELLS:
            raise TimeModelError(
                f"{label}: the fitted forests have {cells:,} constant pieces, more than the {MAX_CELLS:,} this "
                f"source tabulates ({' x '.join(str(len(a)) for a in axes)} cells); use {setting('profile_fit', 'interpolate')}"
            )
        points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, num_features)
        values = sum(forest.predict(points) for forest in forests)
        self._cuts = [c.tolist() for c in cuts]
        self._values = np.asarray(values, dtype=np.float64).reshape([len(a) for a in axes])
        self.lows, self.highs = [float(v) for v in lows], [float(v) for v in highs]
        self.label = label

    @property
    def num_cells(self) -> int:
        """How many constant pieces the function has (the table's size)."""
        return int(self._values.size)

    def outside(self, key: Sequence[float]) -> int | None:
        """The first feature of ``key`` outside the training range, or None when all are inside."""
        for feature, value in enumerate(key):
            if value < self.lows[feature] or value > self.highs[feature]:
                return feature
        return None

    def __call__(self, *key: float) -> float:
        """The forests' summed prediction at ``key`` (what ``predict`` would return, exactly)."""
        index = tuple(bisect_left(cuts, float(np.float32(value))) for cuts, value in zip(self._cuts, key))
        return float(self._values[index])
