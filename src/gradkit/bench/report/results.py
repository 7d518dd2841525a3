"""Read a comparison back from the storage: trials, per-seed runs, summaries per optimizer."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from gradkit.bench.execution.train import RunResult
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
    """All finished trials of one optimizer on one task, and the summary of the best one."""

    task: Task
    optimizer: str
    study_name: str
    trials: list[TrialResult] = field(default_factory=list)

    @property
    def best(self) -> TrialResult | None:
        if not self.trials:
            return None
        key = (lambda t: t.value) if self.task.higher_is_better else (lambda t: -t.value)
        return max(self.trials, key=key)

    def summary(self) -> dict[str, Any]:
        """Mean and 95% CI over the best trial's seeds of the metrics in the report."""
        best = self.best
        if best is None:
            return {"optimizer": self.optimizer, "trials": 0}
        runs = best.runs
        reached = [r for r in runs if r.steps_to_target is not None]
        final = mean_ci([r.final_val for r in runs])
        best_val = mean_ci([r.best_val for r in runs])
        return {
            "optimizer": self.optimizer,
            "trials": len(self.trials),
            "seeds": len(runs),
            "lr": best.lr,
            "hyperparams": best.hyperparams,
            "final_mean": final[0],
            "final_ci": final[1],
            "best_mean": best_val[0],
            "best_ci": best_val[1],
            "reached": len(reached),
            "steps_to_target": mean_ci([r.steps_to_target for r in reached])[0]
            if reached
            else math.nan,
            "time_to_target": mean_ci([r.time_to_target for r in reached])[0]
            if reached
            else math.nan,
            "time_to_target_ci": mean_ci([r.time_to_target for r in reached])[1]
            if reached
            else math.nan,
            "train_time": mean_ci([r.train_time for r in runs])[0],
            "step_time_share": mean_ci([r.step_time_share for r in runs])[0],
            "peak_memory_bytes": max(r.peak_memory_bytes for r in runs),
            "peak_memory_kind": runs[0].peak_memory_kind,
            "optimizer_state_bytes": max(r.optimizer_state_bytes for r in runs),
            "diverged": sum(r.diverged for r in runs),
        }


def load_result(
    storage: optuna.storages.BaseStorage, study_name: str, task: Task, optimizer: str
) -> OptimizerResult:
    """Collect the finished trials of one study (cancelled and failed ones are skipped)."""
    out = OptimizerResult(task=task, optimizer=optimizer, study_name=study_name)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return out
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        runs = [
            RunResult.from_dict(v)
            for k, v in sorted(t.user_attrs.items())
            if k.startswith("run_seed") and isinstance(v, dict)
        ]
        if not runs or t.value is None:
            continue
        hp = t.user_attrs.get("gradkit_hyperparams", dict(t.params))
        out.trials.append(TrialResult(t.number, float(t.params["lr"]), hp, float(t.value), runs))
    out.trials.sort(key=lambda tr: tr.lr)
    return out
