"""Statistics of a comparison, one statistic everywhere: the mean over seeds with its two-sided
95% Student-t confidence interval (tables, figure bands and error bars), and paired tests
against the best optimizer on the same seeds (same initialisations, same batches).

For each optimizer against the best one (by mean), the per-seed differences
``d_s = best_s - other_s`` (signed so that positive means the best one is better) are tested
with a two-sided paired t-test; the p-values of the ``k - 1`` comparisons are corrected with
Holm's step-down method (Holm, "A simple sequentially rejective multiple test procedure",
Scand. J. Statist. 1979), which controls the family-wise error rate at ``alpha``. Optimizers
whose corrected p-value is above ``alpha`` cannot be told apart from the best: they are
"tied for first" with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["STATISTIC", "PairedComparison", "compare_to_best", "holm", "mean_ci", "paired_test"]

#: The name of the interval used in every table and figure of a report.
STATISTIC = "mean ± 95% CI over seeds (Student t)"


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


def paired_test(diffs: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, half_width, p)`` of paired differences: the mean difference, its Student-t
    interval and the two-sided p-value of "mean difference = 0". Identical differences give
    ``p = 1`` when they are all zero and ``p = 0`` otherwise; fewer than two give ``p = nan``."""
    ds = [float(d) for d in diffs if math.isfinite(float(d))]
    mean, half = mean_ci(ds, confidence)
    if len(ds) < 2:
        return mean, half, math.nan
    sd = math.sqrt(sum((d - mean) ** 2 for d in ds) / (len(ds) - 1))
    if sd == 0.0:
        return mean, 0.0, 1.0 if mean == 0.0 else 0.0
    from scipy.stats import t

    stat = mean / (sd / math.sqrt(len(ds)))
    return mean, half, float(2 * t.sf(abs(stat), len(ds) - 1))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (same order; NaN stays NaN and is not counted)."""
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    m = len(idx)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


@dataclass(frozen=True)
class PairedComparison:
    """One optimizer against the best: mean paired difference (positive: the best is better)
    with its 95% interval, the raw and Holm-corrected p-values, the number of paired seeds
    and the verdict: ``"best"``, ``"tied"`` (cannot be told apart: tied for first),
    ``"worse"`` (significantly worse) or ``"untested"`` (fewer than two paired seeds)."""

    diff: float
    diff_ci: float
    p: float
    p_holm: float
    seeds: int
    verdict: str


def compare_to_best(
    per_seed: Mapping[str, Mapping[int, float]],
    higher_is_better: bool,
    alpha: float = 0.05,
) -> dict[str, PairedComparison]:
    """Paired comparison of every optimizer with the best one (highest or lowest mean).

    ``per_seed[name][seed]`` is the final metric of ``name``'s best configuration on ``seed``;
    only seeds that both have are paired.
    """
    if not per_seed:
        return {}
    sign = 1.0 if higher_is_better else -1.0
    means = {k: (sum(v.values()) / len(v) if v else math.nan) for k, v in per_seed.items()}
    finite = [k for k in per_seed if math.isfinite(means[k])]
    if not finite:
        return {}
    best = max(finite, key=lambda k: sign * means[k])
    others = [k for k in per_seed if k != best]
    raw = []
    for k in others:
        seeds = sorted(set(per_seed[best]) & set(per_seed[k]))
        diffs = [sign * (per_seed[best][s] - per_seed[k][s]) for s in seeds]
        raw.append((k, len(seeds), *paired_test(diffs)))
    adjusted = holm([r[4] for r in raw])
    out = {best: PairedComparison(0.0, 0.0, math.nan, math.nan, len(per_seed[best]), "best")}
    for (k, n, diff, half, p), ph in zip(raw, adjusted):
        if n < 2 or math.isnan(ph):
            verdict = "untested"
        else:
            verdict = "worse" if ph <= alpha else "tied"
        out[k] = PairedComparison(diff, half, p, ph, n, verdict)
    return out
