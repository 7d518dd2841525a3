"""A nested log-scale learning-rate grid as an Optuna sampler.

With the few trials a comparison can afford, a grid spreads the learning rates over the search
interval (log scale) and gives every optimizer the same points relative to its default; TPE or
random search spend small budgets less evenly.

The grid of ``n`` trials is :func:`nested_grid`: both ends of the interval first, then the
midpoints of the widest gaps (0, 1, 1/2, 1/4, 3/4, 1/8, ... of the log interval). It is a
function of the final trial count only, and from two points on the grid of ``n`` points is
part of the grid of ``n + 1``: raising ``--trials`` adds points and keeps the old ones, so an
extended study and a study started fresh with the larger budget search exactly the same
learning rates (even spacing when ``n - 1`` is a power of two: 2, 3, 5, 9, 17 trials). One
trial is the midpoint, which the grid of two does not contain; a report only ever uses the
points of the current grid, so that trial is then left out, not mixed in.

Each new trial takes the first grid point that no usable finished or running trial holds
(running trials that started earlier but have not picked yet go first, so concurrent workers do
not pick the same point); a trial killed midway, or a finished one that is not usable (value or
a seed's run missing), frees its point again. Any other parameter is drawn by a seeded random
sampler.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

__all__ = ["LogGridSampler", "grid_index", "log_grid", "nested_fractions", "nested_grid"]


def log_grid(low: float, high: float, n: int) -> list[float]:
    """``n`` points evenly spaced in log scale from ``low`` to ``high`` (midpoint if n == 1)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n == 1:
        return [math.sqrt(low * high)]
    a, b = math.log(low), math.log(high)
    return [math.exp(a + (b - a) * i / (n - 1)) for i in range(n)]


def nested_fractions(n: int) -> list[float]:
    """The first ``n`` positions (fractions of the log interval) of the nested grid, in the
    order they are added: ``[0, 1, 1/2, 1/4, 3/4, 1/8, 3/8, 5/8, 7/8, 1/16, ...]`` (``[1/2]``
    for one point)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n == 1:
        return [0.5]
    out = [0.0, 1.0]
    denom = 2
    while len(out) < n:
        out += [k / denom for k in range(1, denom, 2)][: n - len(out)]
        denom *= 2
    return out


def nested_grid(low: float, high: float, n: int, *, sort: bool = True) -> list[float]:
    """The ``n`` learning rates of the nested log grid over ``[low, high]`` (sorted, or in the
    order they are added with ``sort=False``); the grid of ``n`` points is contained in that of
    ``n + 1`` (see the module docstring)."""
    if not 0 < low <= high:
        raise ValueError(f"need 0 < low <= high, got {low}, {high}")
    a, b = math.log(low), math.log(high)
    points = [math.exp(a + (b - a) * f) for f in nested_fractions(n)]
    return sorted(points) if sort else points


def grid_index(grid: list[float], value: float) -> int | None:
    """The index of the grid point equal to ``value`` (relative tolerance 1e-9), or None."""
    if not grid or not value > 0:
        return None
    idx = min(range(len(grid)), key=lambda i: abs(math.log(grid[i] / value)))
    return idx if math.isclose(grid[idx], value, rel_tol=1e-9) else None


class LogGridSampler(BaseSampler):
    """Nested log grid over ``param`` (a log-scale float); random for every other parameter.

    ``usable(trial)`` says whether a finished trial counts (default: every COMPLETE trial); a
    finished trial that does not count leaves its grid point free for a new trial.
    """

    def __init__(
        self,
        n_points: int,
        param: str = "lr",
        seed: int = 0,
        usable: Callable[[FrozenTrial], bool] | None = None,
    ) -> None:
        if n_points < 1:
            raise ValueError(f"n_points must be >= 1, got {n_points}")
        self.n_points = n_points
        self.param = param
        self.usable = usable or (lambda t: True)
        self._random = RandomSampler(seed=seed)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        if param_name != self.param or not isinstance(param_distribution, FloatDistribution):
            return self._random.sample_independent(study, trial, param_name, param_distribution)
        # in the order points are added, so that an interrupted study holds a smaller grid
        grid = nested_grid(
            param_distribution.low, param_distribution.high, self.n_points, sort=False
        )
        uses = [0] * len(grid)
        pending = 0
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        for t in sorted(trials, key=lambda t: t.number):
            if t.number == trial.number or t.user_attrs.get("gradkit_cancelled"):
                continue
            if t.state == TrialState.COMPLETE and not self.usable(t):
                continue
            if param_name in t.params:
                idx = grid_index(grid, t.params[param_name])
                if idx is not None:
                    uses[idx] += 1
            elif t.state == TrialState.RUNNING and t.number < trial.number:
                pending += 1  # started before this one, about to pick: it goes first
        for _ in range(pending):
            uses[self._least_used(uses)] += 1
        return grid[self._least_used(uses)]

    @staticmethod
    def _least_used(uses: list[int]) -> int:
        return min(range(len(uses)), key=lambda i: (uses[i], i))
