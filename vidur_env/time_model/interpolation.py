"""Scalar piecewise-linear interpolation over 1-D curves and row-wise 2-D grids.

Profiled grids are not rectangular (Vidur profiles prefill attention only where
chunk + KV <= max length), so a 2-D grid is kept as one curve per row and interpolated
first along each bracketing row, then across rows.

Outside the data: with ``extrapolate=False`` a lookup raises :class:`OutOfGridError` naming the
op, the key and the range; with ``extrapolate=True`` it takes the value at the lower end
(clamp: times do not shrink below the smallest profiled size) and, above the upper end, either
continues the last segment linearly (``above="linear"``, the default: times keep growing, as
for a fitted curve) or takes the last value (``above="clamp"``: what Vidur's random forests
predict there, since a tree's leaves extend past its training data, so a forest is flat beyond
it). Each such lookup adds one to the
object's ``off_grid`` counter, so a caller can report how much of a run rests on extrapolated
times.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import Mapping, Sequence

from .errors import OutOfGridError, TimeModelError


__all__ = ["ABOVE_GRID", "Curve1D", "RowGrid2D"]

ABOVE_GRID = ("linear", "clamp")
"""Rules for lookups above the data: the last segment continued, or the last value (Vidur's random forests)."""


def _check_above(above: str, label: str) -> None:
    if above not in ABOVE_GRID:
        raise TimeModelError(f"{label}: above must be one of {', '.join(ABOVE_GRID)}, got {above!r}")


class Curve1D:
    """y(x) through sorted points, linear in between.

    :param xs: strictly increasing x values (at least one).
    :param ys: y at each x.
    :param label: op and axis name used in errors, e.g. ``"mlp (num_tokens)"``.
    :param extrapolate: answer outside the data (clamp below, ``above`` rule above) instead of raising.
    :param above: ``"linear"`` (the last segment continued) or ``"clamp"`` (the last value).
    """

    def __init__(
        self, xs: Sequence[float], ys: Sequence[float], *, label: str, extrapolate: bool, above: str = "linear"
    ) -> None:
        self.xs = [float(x) for x in xs]
        self.ys = [float(y) for y in ys]
        if not self.xs or len(self.xs) != len(self.ys):
            raise TimeModelError(f"{label}: need equally many x and y values, at least one")
        if any(b <= a for a, b in zip(self.xs, self.xs[1:])):
            raise TimeModelError(f"{label}: x values must be strictly increasing")
        _check_above(above, label)
        self.label = label
        self.extrapolate = extrapolate
        self.linear_above = above == "linear"
        self.off_grid = 0
        """Lookups answered outside the data (only with ``extrapolate=True``)."""

    @property
    def low(self) -> float:
        """Smallest x with data."""
        return self.xs[0]

    @property
    def high(self) -> float:
        """Largest x with data."""
        return self.xs[-1]

    def __call__(self, x: float) -> float:
        xs, ys = self.xs, self.ys
        if x < xs[0] or x > xs[-1]:
            if not self.extrapolate:
                raise OutOfGridError.outside(self.label, x, xs[0], xs[-1])
            self.off_grid += 1
            if x < xs[0] or len(xs) == 1 or not self.linear_above:
                return ys[0] if x < xs[0] else ys[-1]
            slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
            return ys[-1] + slope * (x - xs[-1])
        index = bisect_left(xs, x)
        if xs[index] == x:
            return ys[index]
        x0, x1 = xs[index - 1], xs[index]
        return ys[index - 1] + (ys[index] - ys[index - 1]) * (x - x0) / (x1 - x0)


class RowGrid2D:
    """f(row, col) from one :class:`Curve1D` over ``col`` per row value, linear across rows.

    :param rows: row value -> curve over the column axis.
    :param label: op and row-axis name used in errors, e.g. ``"attn_decode (batch_size)"``.
    :param extrapolate: same rule as :class:`Curve1D`, applied on the row axis.
    :param above: same rule as :class:`Curve1D`, applied on the row axis.
    """

    def __init__(
        self, rows: Mapping[float, Curve1D], *, label: str, extrapolate: bool, above: str = "linear"
    ) -> None:
        if not rows:
            raise TimeModelError(f"{label}: no rows")
        _check_above(above, label)
        self.row_values = sorted(float(r) for r in rows)
        self.curves = [rows[r] for r in sorted(rows)]
        self.label = label
        self.extrapolate = extrapolate
        self.linear_above = above == "linear"
        self.off_grid = 0
        """Lookups outside the data on either axis, each counted once."""

    def __call__(self, row: float, col: float) -> float:
        values = self.row_values
        if row < values[0] or row > values[-1]:
            if not self.extrapolate:
                raise OutOfGridError.outside(self.label, row, values[0], values[-1], where=f" (lookup at {row:g}, {col:g})")
            self.off_grid += 1
            if row < values[0] or len(values) == 1 or not self.linear_above:
                return self.curves[0 if row < values[0] else -1](col)
            last, before = self.curves[-1](col), self.curves[-2](col)
            return last + (last - before) * (row - values[-1]) / (values[-1] - values[-2])
        index = bisect_left(values, row)
        exact = values[index] == row
        bracket = self.curves[index:index + 1] if exact else self.curves[index - 1:index + 1]
        if self.extrapolate and any(col < curve.low or col > curve.high for curve in bracket):
            self.off_grid += 1
        if exact:
            return self.curves[index](col)
        low, high = self.curves[index - 1](col), self.curves[index](col)
        return low + (high - low) * (row - values[index - 1]) / (values[index] - values[index - 1])
