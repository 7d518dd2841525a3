"""A log-spaced learning-rate grid as an Optuna sampler.

With the few trials a comparison can afford, a grid spreads the learning rates evenly over the
search interval (log scale) and gives every optimizer the same points relative to its default;
TPE or random search spend small budgets less evenly. Each new trial takes the first grid point
no finished or running trial holds (running trials that started earlier but have not picked yet
go first, so concurrent workers do not pick the same point); a trial killed midway frees its
point again. Any other
parameter is drawn by a seeded random sampler.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

__all__ = ["LogGridSampler", "log_grid"]


def log_grid(low: float, high: float, n: int) -> list[float]:
    """``n`` points evenly spaced in log scale from ``low`` to ``high`` (midpoint if n == 1)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n == 1:
        return [math.sqrt(low * high)]
    a, b = math.log(low), math.log(high)
    return [math.exp(a + (b - a) * i / (n - 1)) for i in range(n)]


class LogGridSampler(BaseSampler):
    """Grid over ``param`` (a log-scale float); random for every other parameter."""

    def __init__(self, n_points: int, param: str = "lr", seed: int = 0) -> None:
        if n_points < 1:
            raise ValueError(f"n_points must be >= 1, got {n_points}")
        self.n_points = n_points
        self.param = param
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
        grid = log_grid(param_distribution.low, param_distribution.high, self.n_points)
        uses = [0] * len(grid)
        pending = 0
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        for t in sorted(trials, key=lambda t: t.number):
            if t.number == trial.number or t.user_attrs.get("gradkit_cancelled"):
                continue
            if param_name in t.params:
                value = t.params[param_name]
                idx = min(range(len(grid)), key=lambda i: abs(math.log(grid[i] / value)))
                if math.isclose(grid[idx], value, rel_tol=1e-9):
                    uses[idx] += 1
            elif t.state == TrialState.RUNNING and t.number < trial.number:
                pending += 1  # started before this one, about to pick: it goes first
        for _ in range(pending):
            uses[self._least_used(uses)] += 1
        return grid[self._least_used(uses)]

    @staticmethod
    def _least_used(uses: list[int]) -> int:
        return min(range(len(uses)), key=lambda i: (uses[i], i))
