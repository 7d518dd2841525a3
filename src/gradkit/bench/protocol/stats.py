"""Mean and confidence interval over seeds (Student's t)."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["mean_ci"]


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Return ``(mean, half_width)`` of the two-sided ``confidence`` interval of the mean.

    Uses Student's t with ``n - 1`` degrees of freedom; the half width is ``nan`` for fewer than
    two finite values (one seed gives no interval).
    """
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return math.nan, math.nan
    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return mean, math.nan
    from scipy.stats import t

    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, float(t.ppf(0.5 + confidence / 2, n - 1)) * math.sqrt(var / n)
