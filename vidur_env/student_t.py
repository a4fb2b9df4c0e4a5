"""Student's t distribution with numpy-free arithmetic, for every confidence interval of the project.

The evaluation's paired comparisons of two policies (:mod:`vidur_env.paired`) and the sweep's
means over seeds (:mod:`sb3_klppo.sweep`) both need a t quantile and nothing else of SciPy. The CDF
is exact for integer degrees of freedom (a finite trigonometric sum) and is inverted by bisection.
It lives in ``vidur_env``, the lower layer, so that both packages can import it.
"""
from __future__ import annotations

import math

CONFIDENCE = 0.95
"""Coverage of the intervals in reports, ``evaluation.json`` and the sweep's report."""


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


def t_central_mass(t: float, df: int) -> float:
    """P(|T| <= t): one minus the two-sided p-value of the statistic ``t``."""
    return 2.0 * student_t_cdf(abs(t), df) - 1.0


def t_critical(confidence: float, df: int) -> float:
    """The t with P(|T| <= t) = ``confidence``: the half-width of a CI in standard errors."""
    return student_t_quantile(0.5 + confidence / 2, df)


def mean_half_width(std: float, n: int, confidence: float = CONFIDENCE) -> float:
    """Half-width of the t confidence interval of the mean of ``n >= 2`` values of sample std ``std``."""
    return t_critical(confidence, n - 1) * std / math.sqrt(n)
