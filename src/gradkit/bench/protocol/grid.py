"""The learning-rate grid of a study: a function of the final trial count only.

With the few trials a comparison can afford, a grid spreads the learning rates evenly over the
search interval (log scale) and gives every optimizer the same points relative to its default;
TPE or random search spend small budgets less evenly.

The grid of ``n`` trials is :func:`log_grid` (``n`` points evenly spaced in log scale, both ends
included; the midpoint for one trial), the same for every optimizer and whether a study is new
or extended. A report uses exactly the points of the current grid (:func:`grid_index`), never
trials a study holds elsewhere, so optimizers are always compared on the same grid:

- raising ``--trials`` from ``n`` to ``m`` keeps every old point when ``m - 1`` is a multiple of
  ``n - 1`` (nested grids: 2 -> 3 -> 5 -> 9 -> 17, or 3 -> 7 -> 13) and runs only the new
  ones; otherwise the old points that are not on the new grid are left out of the report (and
  the ends, always on the grid, are kept);
- lowering ``--trials`` reports on the smaller grid, running the points it lacks.

(Optuna's ``GridSampler`` is not used: its grid is fixed per study, while a study here grows.)
"""

from __future__ import annotations

import math

__all__ = ["grid_index", "log_grid"]


def log_grid(low: float, high: float, n: int) -> list[float]:
    """``n`` points evenly spaced in log scale from ``low`` to ``high`` (midpoint if n == 1)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 < low <= high:
        raise ValueError(f"need 0 < low <= high, got {low}, {high}")
    if n == 1:
        return [math.sqrt(low * high)]
    a, b = math.log(low), math.log(high)
    return [math.exp(a + (b - a) * i / (n - 1)) for i in range(n)]


def grid_index(grid: list[float], value: float) -> int | None:
    """The index of the grid point equal to ``value`` (relative tolerance 1e-9), or None."""
    if not grid or not value > 0:
        return None
    idx = min(range(len(grid)), key=lambda i: abs(math.log(grid[i] / value)))
    return idx if math.isclose(grid[idx], value, rel_tol=1e-9) else None
