"""Read a comparison back from the storage: the planned trials, per-seed runs, summaries.

A report uses exactly the trials of the plan it is given: for the grid sampler, one usable trial
on each point of the plan's lr grid (the earliest); for the other samplers, the first
``n_trials`` usable trials. Trials a study holds beyond that (it ran with a larger ``--trials``
before) are left out, so every optimizer is ranked on the same grid and the same number of
trials; points that have no usable trial yet are listed in :attr:`OptimizerResult.missing_lrs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import TrialState

from gradkit.bench.execution.train import RunResult
from gradkit.bench.protocol.grid import grid_index
from gradkit.bench.protocol.plan import StudyPlan, study_name
from gradkit.bench.protocol.stats import mean_ci
from gradkit.bench.tasks.interface import Task

__all__ = ["OptimizerResult", "TrialResult", "load_result"]


@dataclass
class TrialResult:
    """One finished trial: its hyperparameters, objective and per-seed runs."""

    number: int
    lr: float
    hyperparams: dict[str, Any]
    value: float
    runs: list[RunResult]


@dataclass
class OptimizerResult:
    """The planned trials of one optimizer on one task, and the summary of the best one.

    Attributes:
        planned: the number of trials of the plan (``--trials``).
        missing_lrs: grid points (learning rates) with no usable trial yet.
        lr_range: the searched learning-rate interval.
        lr_factors: the same interval relative to the optimizer's default lr (``--lr-range``).
        step_time: seconds per training step from the calibration pass (see
            :mod:`gradkit.bench.execution.timing`), or None when not calibrated.
        source: the gradient source of the arm when the comparison names sources (``None``:
            backprop, not named); ``optimizer`` is then the arm's label (``adamw+dfa``).
        aggregator: the multi-task aggregator of the arm, or None.
    """

    task: Task
    optimizer: str
    study_name: str
    trials: list[TrialResult] = field(default_factory=list)
    planned: int = 0
    missing_lrs: list[float] = field(default_factory=list)
    lr_range: tuple[float, float] = (math.nan, math.nan)
    lr_factors: tuple[float, float] = (math.nan, math.nan)
    step_time: float | None = None
    source: str | None = None
    aggregator: str | None = None

    @property
    def complete(self) -> bool:
        """True if every planned trial is there."""
        return len(self.trials) >= self.planned and not self.missing_lrs

    @property
    def best(self) -> TrialResult | None:
        """The trial with the best objective (None without trials)."""
        if not self.trials:
            return None
        key = (lambda t: t.value) if self.task.higher_is_better else (lambda t: -t.value)
        return max(self.trials, key=key)

    def edge(self) -> str | None:
        """``"low"`` or ``"high"`` when the best lr is the lowest or highest one tried, so the
        optimum may lie outside the searched range (under-tuned); ``"single"`` with one
        trial; None otherwise."""
        best = self.best
        if best is None:
            return None
        if len(self.trials) < 2:
            return "single"
        lrs = [t.lr for t in self.trials]
        if math.isclose(best.lr, min(lrs), rel_tol=1e-9):
            return "low"
        if math.isclose(best.lr, max(lrs), rel_tol=1e-9):
            return "high"
        return None

    def per_seed(self) -> dict[int, float]:
        """Final validation metric of the best configuration on each seed (for paired tests)."""
        best = self.best
        return {} if best is None else {r.seed: float(r.final_val) for r in best.runs}

    def failed_lrs(self) -> list[float]:
        """Learning rates whose trial diverged on some seed or ended, on average, at the task's
        chance level (no better than ``chance`` plus a tenth of the way to the target)."""
        task = self.task
        out = []
        for t in self.trials:
            if any(r.diverged for r in t.runs) or not math.isfinite(t.value):
                out.append(t.lr)
            elif task.chance is not None:
                margin = abs(task.target - task.chance) / 10
                at_chance = (
                    t.value <= task.chance + margin
                    if task.higher_is_better
                    else t.value >= task.chance - margin
                )
                if at_chance:
                    out.append(t.lr)
        return out

    def summary(self) -> dict[str, Any]:
        """Mean and 95% CI over the best trial's seeds of the metrics in the report.

        Times: ``time_to_target`` and ``train_time`` are steps times :attr:`step_time` (the
        calibrated seconds per step), NaN when not calibrated; ``raw_*`` are the wall times
        measured while the trials ran (they depend on the machine's load at the time).
        """
        base = {
            "optimizer": self.optimizer,
            "trials": len(self.trials),
            "planned_trials": self.planned,
            "complete": self.complete,
            "missing_lrs": list(self.missing_lrs),
            "lr_range": list(self.lr_range),
        }
        best = self.best
        if best is None:
            return base
        runs = best.runs
        reached = [r for r in runs if r.steps_to_target is not None]
        final = mean_ci([r.final_val for r in runs])
        best_val = mean_ci([r.best_val for r in runs])
        step_time = self.step_time if self.step_time is not None else math.nan
        steps_to_target = mean_ci([r.steps_to_target for r in reached]) if reached else None
        steps_done = [r.steps[-1] if r.steps else 0 for r in runs]
        raw_ttt = mean_ci([r.time_to_target for r in reached]) if reached else (math.nan,) * 2
        return {
            **base,
            "seeds": len(runs),
            "lr": best.lr,
            "edge": self.edge(),
            "hyperparams": best.hyperparams,
            "final_mean": final[0],
            "final_ci": final[1],
            "best_mean": best_val[0],
            "best_ci": best_val[1],
            "reached": len(reached),
            "steps_to_target": steps_to_target[0] if steps_to_target else math.nan,
            "steps_to_target_ci": steps_to_target[1] if steps_to_target else math.nan,
            "step_time": step_time,
            "time_to_target": (steps_to_target[0] if steps_to_target else math.nan) * step_time,
            "time_to_target_ci": (steps_to_target[1] if steps_to_target else math.nan) * step_time,
            "train_time": mean_ci(steps_done)[0] * step_time,
            "raw_time_to_target": raw_ttt[0],
            "raw_time_to_target_ci": raw_ttt[1],
            "raw_train_time": mean_ci([r.train_time for r in runs])[0],
            "step_time_share": mean_ci([r.step_time_share for r in runs])[0],
            "peak_memory_bytes": max(r.peak_memory_bytes for r in runs),
            "peak_memory_kind": runs[0].peak_memory_kind,
            "optimizer_state_bytes": max(r.optimizer_state_bytes for r in runs),
            "diverged": sum(r.diverged for r in runs),
            "source": self.source,
            "aggregator": self.aggregator,
            "passes_per_step": _passes_per_step(runs),
            "task_metrics": _task_metrics(runs),
        }


def _passes_per_step(runs: list[RunResult]) -> dict[str, float]:
    """Forward/backward/JVP passes per optimizer step over the runs (runs stored before passes
    were counted are left out; empty when none counted them)."""
    totals: dict[str, float] = {"forward": 0.0, "backward": 0.0, "jvp": 0.0}
    steps = 0
    for r in runs:
        if not r.passes.get("steps"):
            continue
        steps += r.passes["steps"]
        for k in totals:
            totals[k] += r.passes.get(k, 0)
    return {k: v / steps for k, v in totals.items()} if steps else {}


def _task_metrics(runs: list[RunResult]) -> dict[str, tuple[float, float]]:
    """Mean and 95% CI over the runs of each task's final metric (multi-task tasks).

    A diverged run records no per-task metrics, so these intervals cover the runs that did not
    diverge (the objective's interval counts a diverged run at the task's worst value)."""
    names = list(dict.fromkeys(k for r in runs for k in r.task_metrics))
    out = {}
    for name in names:
        values = [r.task_metrics[name] for r in runs if name in r.task_metrics]
        out[name] = mean_ci(values)
    return out


def _trial_result(t: Any) -> TrialResult:
    runs = [
        RunResult.from_dict(v)
        for k, v in sorted(t.user_attrs.items())
        if k.startswith("run_seed") and isinstance(v, dict)
    ]
    hp = t.user_attrs.get("gradkit_hyperparams", dict(t.params))
    return TrialResult(t.number, float(t.params["lr"]), hp, float(t.value), runs)


def load_result(storage: Any, plan: StudyPlan) -> OptimizerResult:
    """The planned trials of ``plan``'s study (see the module docstring); failed, cancelled
    and unusable trials (a value or a seed's run missing) are skipped."""
    import optuna

    name = study_name(plan)
    out = OptimizerResult(
        task=plan.task,
        optimizer=plan.arm,
        source=plan.source.name if plan.source is not None else None,
        aggregator=plan.aggregator,
        study_name=name,
        planned=plan.n_trials,
        lr_range=plan.lr_range(),
        lr_factors=tuple(plan.lr_factors),
    )
    grid = plan.lr_grid()
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        out.missing_lrs = list(grid or [])
        return out
    usable = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if plan.usable(t) and "lr" in t.params
    ]
    usable.sort(key=lambda t: t.number)
    if grid is None:
        chosen = usable[: plan.n_trials]
    else:
        by_point: dict[int, Any] = {}
        for t in usable:
            idx = grid_index(grid, t.params["lr"])
            if idx is not None and idx not in by_point:
                by_point[idx] = t
        chosen = [by_point[i] for i in sorted(by_point)]
        out.missing_lrs = [lr for i, lr in enumerate(grid) if i not in by_point]
    out.trials = sorted((_trial_result(t) for t in chosen), key=lambda tr: tr.lr)
    return out
