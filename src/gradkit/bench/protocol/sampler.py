"""The learning-rate grid of a study (:mod:`gradkit.bench.protocol.grid`) as an Optuna
sampler: each new trial takes the first grid point that no usable finished or running trial
holds (running trials that started earlier but have not picked yet go first, so concurrent
workers do not pick the same point); a trial killed midway, or a finished one that is not
usable, frees its point again. Any other parameter is drawn by a seeded random sampler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

from gradkit.bench.protocol.grid import grid_index, log_grid

__all__ = ["LogGridSampler", "grid_index", "log_grid"]


class LogGridSampler(BaseSampler):
    """The log grid of ``n_points`` over ``param`` (a log-scale float); random for every other parameter.

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
        grid = log_grid(param_distribution.low, param_distribution.high, self.n_points)
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
