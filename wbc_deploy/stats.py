"""Counting statistics shared by summary.csv and the slide report (standard library only, torch-free).

One implementation of the Wilson score interval (Wilson 1927; Newcombe 1998, method 3) for a class's
share of the counted cells, so the CSV and the report can never disagree.
"""
from __future__ import annotations

import math
from statistics import NormalDist

#: The confidence level of every interval wbc-deploy reports.
CONFIDENCE = 0.95


def z_value(confidence: float = CONFIDENCE) -> float:
    """The two-sided standard-normal quantile of ``confidence`` (1.959964 for 0.95)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be within (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``k / n`` as fractions (0..1).

    Always contains the point estimate ``k / n``; ``k == 0`` gives a lower bound of exactly 0 and
    ``k == n`` an upper bound of exactly 1 (the closed form lands a rounding error away from them).
    ``n == 0`` (nothing counted) gives ``(0.0, 0.0)``: there is no estimate, callers show no interval.
    """
    k, n = int(k), int(n)
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 0.0
    p = k / n
    z = z_value(confidence)
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    lo = 0.0 if k == 0 else min(p, max(0.0, centre - half))
    hi = 1.0 if k == n else max(p, min(1.0, centre + half))
    return lo, hi


def wilson_percent(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """:func:`wilson_interval` in percent (0..100)."""
    lo, hi = wilson_interval(k, n, confidence)
    return 100.0 * lo, 100.0 * hi
