"""The protocol of one study (fair tuning): every optimizer gets the same number of trials; each
trial is one hyperparameter configuration trained over the same seeds.

A study's identity (:func:`study_name`) covers everything that makes its trials comparable:
the budget (seeds, steps, batch size, schedule, lr range, sampler), the task's fingerprint
(:func:`gradkit.bench.tasks.fingerprint.task_fingerprint`: model, data, scoring, version), the
gradkit version and the device kind. The trial count is left out: raising ``--trials`` extends
a study (see :mod:`gradkit.bench.protocol.grid` for which old points are reused), and a report
uses exactly the planned grid points (:meth:`StudyPlan.lr_grid`), whatever else the study
holds.

The learning rate is searched in log scale over ``[low * centre, high * centre]``, where
``centre`` is the middle of the optimizer's well-tuned range
(:func:`gradkit.bench.protocol.optimizers.search_centre`), so each optimizer gets an interval of
the same width centred where it trains well; secondary learning rates (``*_lr``, e.g. Muon's ``adamw_lr``)
are scaled with it. ``search`` adds more hyperparameters. The objective is the
mean final validation metric over the seeds; per-seed curves and metrics are stored as trial user
attributes (``run_seed<k>``).

Diagnostics (``StudyPlan.diagnose``, see :mod:`gradkit.bench.execution.diagnose`) run on the first seed of
every trial only, to bound their cost; they do not change the training itself. They are part of
the study signature when enabled, so a study with diagnostics is a different study from the
same budget without them (and the signature of a study without diagnostics is unchanged).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradkit
from gradkit.bench.protocol.grid import grid_index, log_grid
from gradkit.bench.protocol.optimizers import OptimizerSpec, scaled_hyperparams, search_centre
from gradkit.bench.protocol.sources import SourceChoice
from gradkit.bench.tasks.interface import Task

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

__all__ = [
    "SAMPLERS",
    "SEARCHABLE",
    "StudyPlan",
    "make_sampler",
    "study_name",
    "suggest",
    "usable_trial",
]

#: Extra hyperparameters ``--search`` accepts, and how each is searched.
SEARCHABLE: dict[str, str] = {
    "weight_decay": "log scale over [0.1x, 10x] the optimizer's default (or [1e-5, 1e-1] if 0)",
    "beta1": "uniform over [0.8, 0.99] (optimizers with betas)",
    "beta2": "log scale of 1-beta2 over [1e-3, 1e-1] (optimizers with betas)",
    "momentum": "uniform over [0.8, 0.99] (optimizers with momentum)",
}

SAMPLERS = ("grid", "tpe", "random")


def usable_trial(trial: FrozenTrial, seeds: list[int]) -> bool:
    """True if a trial finished with a value and a stored run for every seed: only such trials
    count towards the budget and enter a report (others are redone)."""
    if trial.state.name != "COMPLETE" or trial.value is None or trial.value != trial.value:
        return False
    return all(isinstance(trial.user_attrs.get(f"run_seed{s}"), dict) for s in seeds)


@dataclass
class StudyPlan:
    """One (task, optimizer) study and its budget.

    ``task_fingerprint`` (computed on ``device_kind`` when not given), ``gradkit_version`` and
    ``device_kind`` are part of the study's identity (see the module docstring).
    """

    task: Task
    spec: OptimizerSpec
    n_trials: int
    seeds: list[int]
    steps: int
    batch_size: int
    eval_every: int
    schedule: str = "cosine"
    lr_factors: tuple[float, float] = (0.3, 30.0)
    search: list[str] = field(default_factory=list)
    sampler: str = "grid"
    sampler_seed: int = 0
    prefix: str = "gradkit"
    diagnose: list[str] = field(default_factory=list)
    diagnose_every: int | None = None
    task_fingerprint: str | None = None
    gradkit_version: str = gradkit.__version__
    device_kind: str = "cpu"
    source: SourceChoice | None = None
    aggregator: str | None = None

    def __post_init__(self) -> None:
        if self.task_fingerprint is None:
            from gradkit.bench.tasks.fingerprint import task_fingerprint

            self.task_fingerprint = task_fingerprint(self.task, self.device_kind)

    @property
    def arm(self) -> str:
        """The arm's label in the report: the optimizer, then ``+source`` when the comparison
        names sources (``adamw+backprop``, ``adamw+forward:4``), then ``+aggregator``."""
        label = self.spec.name
        if self.source is not None:
            label += f"+{self.source.name}"
        if self.aggregator is not None:
            label += f"+{self.aggregator}"
        return label

    @property
    def study_label(self) -> str:
        """The arm's part of the study name: :attr:`arm` without ``+backprop`` (backprop
        studies keep the names they had before sources were a dimension)."""
        label = self.spec.name
        if self.source is not None and not self.source.is_backprop:
            label += f"+{self.source.name}"
        if self.aggregator is not None:
            label += f"+{self.aggregator}"
        return label

    def lr_grid(self) -> list[float] | None:
        """The learning rates the grid sampler searches with ``n_trials`` trials (sorted), or
        None for the other samplers."""
        if self.sampler != "grid":
            return None
        return log_grid(*self.lr_range(), self.n_trials)

    def usable(self, trial: FrozenTrial) -> bool:
        """:func:`usable_trial` with this plan's seeds."""
        return usable_trial(trial, self.seeds)

    def on_grid(self, trial: FrozenTrial) -> bool:
        """True if the trial's lr is one of this plan's grid points (always true for the other
        samplers, and for a running trial that has not picked its lr yet)."""
        grid = self.lr_grid()
        if grid is None or "lr" not in trial.params:
            return True
        return grid_index(grid, trial.params["lr"]) is not None

    def counts(self, trial: FrozenTrial) -> bool:
        """True if a trial counts towards this plan's budget: running, or finished and usable,
        and on this plan's grid (a study extended to more trials, then run with fewer, holds
        points that this plan does not use)."""
        if trial.state.name == "COMPLETE" and not self.usable(trial):
            return False
        return self.on_grid(trial)

    def grid_points_done(self, trials: list[FrozenTrial]) -> int:
        """How many of the planned trials are done: distinct grid points held by usable trials
        (grid sampler), or usable trials (other samplers)."""
        done = [t for t in trials if t.state.name == "COMPLETE" and self.usable(t)]
        grid = self.lr_grid()
        if grid is None:
            return len(done)
        return len({grid_index(grid, t.params.get("lr", 0.0)) for t in done} - {None})

    def lr_range(self) -> tuple[float, float]:
        """The searched learning-rate interval: ``lr_factors`` x the optimizer's search centre
        (:func:`~gradkit.bench.protocol.optimizers.search_centre`)."""
        base = search_centre(self.spec)
        return base * self.lr_factors[0], base * self.lr_factors[1]

    def diagnose_interval(self) -> int:
        """Steps between two diagnostic measurements (default: the evaluation interval)."""
        return min(self.diagnose_every or self.eval_every, self.steps)

    def signature(self) -> dict[str, Any]:
        """What makes trials comparable (the trial count is left out: raising it extends).

        The diagnostics and their interval are included only when some are enabled, so that a
        study resumed with other ``--diagnose`` options is a separate study rather than one
        whose trials silently lack (or have) the diagnostics.
        """
        sig = {
            "task": self.task.name,
            "optimizer": self.spec.name,
            "seeds": list(self.seeds),
            "steps": self.steps,
            "batch_size": self.batch_size,
            "eval_every": self.eval_every,
            "schedule": self.schedule,
            "lr_factors": list(self.lr_factors),
            "lr_centre": search_centre(self.spec),
            "search": sorted(self.search),
            "sampler": self.sampler,
            "grid": "log" if self.sampler == "grid" else None,
            "task_fingerprint": self.task_fingerprint,
            "gradkit": self.gradkit_version,
            "device": self.device_kind,
        }
        if self.diagnose:
            sig["diagnose"] = sorted(set(self.diagnose))
            sig["diagnose_every"] = self.diagnose_interval()
        if self.source is not None and not self.source.is_backprop:
            sig["source"] = self.source.name
        if self.aggregator is not None:
            sig["aggregator"] = self.aggregator
        return sig


def study_name(plan: StudyPlan) -> str:
    """``prefix:task:arm:hash`` where the hash covers :meth:`StudyPlan.signature` and ``arm``
    is :attr:`StudyPlan.study_label` (the optimizer's name for a backprop arm)."""
    digest = hashlib.sha1(json.dumps(plan.signature(), sort_keys=True).encode()).hexdigest()[:8]
    return f"{plan.prefix}:{plan.task.name}:{plan.study_label}:{digest}"


def make_sampler(plan: StudyPlan) -> optuna.samplers.BaseSampler:
    """The Optuna sampler named by ``plan.sampler``."""
    import optuna

    from gradkit.bench.protocol.sampler import LogGridSampler

    if plan.sampler == "grid":
        return LogGridSampler(plan.n_trials, "lr", seed=plan.sampler_seed, usable=plan.usable)
    if plan.sampler == "tpe":
        return optuna.samplers.TPESampler(
            seed=plan.sampler_seed, n_startup_trials=max(2, plan.n_trials // 3)
        )
    if plan.sampler == "random":
        return optuna.samplers.RandomSampler(seed=plan.sampler_seed)
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {plan.sampler!r}")


def suggest(trial: optuna.Trial, plan: StudyPlan) -> dict[str, Any]:
    """Hyperparameters of one trial (the optimizer's defaults for anything not searched)."""
    low, high = plan.lr_range()
    # Secondary learning rates (e.g. Muon's ``adamw_lr`` for non-matrix parameters) move with
    # the searched one, keeping the optimizer's own ratio to its main lr.
    hp: dict[str, Any] = scaled_hyperparams(
        plan.spec, trial.suggest_float("lr", low, high, log=True)
    )
    defaults = plan.spec.defaults
    for name in plan.search:
        if name == "weight_decay" and "weight_decay" in defaults:
            wd = float(defaults["weight_decay"] or 0.0)
            lo, hi = (wd * 0.1, wd * 10) if wd > 0 else (1e-5, 1e-1)
            hp["weight_decay"] = trial.suggest_float("weight_decay", lo, hi, log=True)
        elif name in ("beta1", "beta2") and "betas" in defaults:
            b1, b2 = hp.get("betas", tuple(defaults["betas"]))[:2]
            if name == "beta1":
                b1 = trial.suggest_float("beta1", 0.8, 0.99)
            else:
                b2 = 1.0 - trial.suggest_float("one_minus_beta2", 1e-3, 1e-1, log=True)
            hp["betas"] = (b1, b2)
        elif name == "momentum" and "momentum" in defaults:
            hp["momentum"] = trial.suggest_float("momentum", 0.8, 0.99)
    return hp
