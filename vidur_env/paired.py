"""Paired comparison of two policies over the same evaluation episodes, with numpy alone.

Both policies route the same workloads (episode k uses the same seed for every policy), so the
honest question is whether the per-episode differences are centred away from zero: a Student t
interval on those differences (the t quantile from :mod:`vidur_env.student_t`, no SciPy).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from vidur_env.student_t import CONFIDENCE, mean_half_width


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
    half = mean_half_width(float(np.std(diffs, ddof=1)), n, confidence)
    return PairedDifference(float(np.mean(diffs)), half, n, confidence)
