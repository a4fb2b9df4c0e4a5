"""Paired comparison of two policies over the same evaluation episodes, with numpy alone.

Both policies route the same workloads (episode k uses the same seed for every policy), so the
honest question is whether the per-episode differences are centred away from zero: a Student t
interval on those differences. The t quantile comes from the exact CDF of the t distribution for
integer degrees of freedom (a finite trigonometric sum) inverted by bisection, so no SciPy is
needed for the one quantile the report uses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

CONFIDENCE = 0.95
"""Coverage of the intervals in reports and ``evaluation.json``."""


def student_t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with ``df`` (a positive integer) degrees of freedom, exactly.

    With ``theta = atan(t / sqrt(df))``: for odd df, ``1/2 + (theta + sin(theta) cos(theta) S) / pi``
    with ``S = sum_k c_k cos(theta)^(2k)``, c_0 = 1, c_k = c_(k-1) (2k) / (2k + 1), k < (df - 1) / 2;
    for even df, ``1/2 + sin(theta) S / 2`` with c_k = c_(k-1) (2k - 1) / (2k), k < df / 2
    (Abramowitz and Stegun 26.7.3 and 26.7.4).
    """
    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df!r}")
    theta = math.atan(t / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    odd = df % 2 == 1
    terms = (df - 1) // 2 if odd else df // 2
    total, coef = 0.0, 1.0
    for k in range(terms):
        if k:
            coef *= (2 * k) / (2 * k + 1) if odd else (2 * k - 1) / (2 * k)
        total += coef * cos2**k
    if odd:
        return 0.5 + (theta + (math.sin(theta) * math.cos(theta) * total if df > 1 else 0.0)) / math.pi
    return 0.5 + math.sin(theta) * total / 2


def student_t_quantile(probability: float, df: int) -> float:
    """The t with ``student_t_cdf(t, df) == probability`` (bisection to float precision)."""
    if not 0.0 < probability < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {probability!r}")
    if probability < 0.5:
        return -student_t_quantile(1.0 - probability, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < probability:
        low, high = high, 2.0 * high
    for _ in range(200):
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        low, high = (middle, high) if student_t_cdf(middle, df) < probability else (low, middle)
    return 0.5 * (low + high)


@dataclass(frozen=True)
class PairedDifference:
    """Mean per-episode relative difference of a lower-is-better metric, A against B, in percent,
    with the half-width of its t interval (infinite with one episode: nothing can be told)."""

    mean_pct: float
    half_width_pct: float
    episodes: int
    confidence: float = CONFIDENCE

    @property
    def verdict(self) -> str:
        """``better`` or ``worse`` when the interval excludes zero, else ``tie``."""
        if self.mean_pct - self.half_width_pct > 0:
            return "worse"
        if self.mean_pct + self.half_width_pct < 0:
            return "better"
        return "tie"

    def __str__(self) -> str:
        if math.isinf(self.half_width_pct):
            return f"{self.mean_pct:+.2f}%, 1 episode: no interval"
        return f"{self.mean_pct:+.2f}% ± {self.half_width_pct:.2f}%"

    def as_dict(self) -> dict[str, float | int | str | None]:
        half = None if math.isinf(self.half_width_pct) else self.half_width_pct
        return {"mean_pct": self.mean_pct, "half_width_pct": half, "episodes": self.episodes,
                "confidence": self.confidence, "verdict": self.verdict}


def paired_difference(ours: Sequence[float], theirs: Sequence[float], confidence: float = CONFIDENCE) -> PairedDifference:
    """``100 (ours_k / theirs_k - 1)`` per episode k, its mean and t-interval half-width."""
    a, b = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired figures need the same episodes on both sides, got {a.shape} and {b.shape}")
    diffs = 100.0 * (a / b - 1.0)
    n = diffs.size
    if n == 1:
        return PairedDifference(float(diffs[0]), math.inf, 1, confidence)
    t = student_t_quantile(0.5 + confidence / 2, n - 1)
    half = t * float(np.std(diffs, ddof=1)) / math.sqrt(n)
    return PairedDifference(float(np.mean(diffs)), half, n, confidence)
