"""Fair tuning: every optimizer gets the same number of trials; each trial is one
hyperparameter configuration trained over the same seeds.

The learning rate is searched in log scale over ``[low * default_lr, high * default_lr]``, where
``default_lr`` is the optimizer's own default (so each optimizer gets an interval of the same
width around its paper's setting); secondary learning rates (``*_lr``, e.g. Muon's ``adamw_lr``)
are scaled with it. ``search`` adds more hyperparameters. The objective is the
mean final validation metric over the seeds; per-seed curves and metrics are stored as trial user
attributes (``run_seed<k>``).

Diagnostics (``StudyPlan.diagnose``, see :mod:`gradkit.bench.diagnose`) run on the first seed of
every trial only, to bound their cost; they do not change the training itself. They are part of
the study signature when enabled, so a study with diagnostics is a different study from the
same budget without them (and the signature of a study without diagnostics is unchanged).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from gradkit.bench import workers
from gradkit.bench.diagnose import make_callbacks
from gradkit.bench.optimizers import OptimizerSpec, default_lr, scaled_hyperparams
from gradkit.bench.sampler import LogGridSampler
from gradkit.bench.task import Task
from gradkit.bench.train import train_run

__all__ = ["SEARCHABLE", "StudyPlan", "make_sampler", "run_study", "study_name"]

#: Extra hyperparameters ``--search`` accepts, and how each is searched.
SEARCHABLE: dict[str, str] = {
    "weight_decay": "log scale over [0.1x, 10x] the optimizer's default (or [1e-5, 1e-1] if 0)",
    "beta1": "uniform over [0.8, 0.99] (optimizers with betas)",
    "beta2": "log scale of 1-beta2 over [1e-3, 1e-1] (optimizers with betas)",
    "momentum": "uniform over [0.8, 0.99] (optimizers with momentum)",
}

SAMPLERS = ("grid", "tpe", "random")


@dataclass
class StudyPlan:
    """One (task, optimizer) study and its budget."""

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

    def lr_range(self) -> tuple[float, float]:
        """The searched learning-rate interval: ``lr_factors`` x the optimizer's default."""
        base = default_lr(self.spec)
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
            "search": sorted(self.search),
            "sampler": self.sampler,
        }
        if self.diagnose:
            sig["diagnose"] = sorted(set(self.diagnose))
            sig["diagnose_every"] = self.diagnose_interval()
        return sig


def study_name(plan: StudyPlan) -> str:
    """``prefix:task:optimizer:hash`` where the hash covers the budget signature."""
    digest = hashlib.sha1(json.dumps(plan.signature(), sort_keys=True).encode()).hexdigest()[:8]
    return f"{plan.prefix}:{plan.task.name}:{plan.spec.name}:{digest}"


def make_sampler(plan: StudyPlan) -> optuna.samplers.BaseSampler:
    """The Optuna sampler named by ``plan.sampler``."""
    if plan.sampler == "grid":
        return LogGridSampler(plan.n_trials, "lr", seed=plan.sampler_seed)
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


ProgressFn = Callable[[str, dict[str, Any]], None]


def run_study(
    storage: optuna.storages.BaseStorage,
    plan: StudyPlan,
    device: torch.device,
    *,
    progress: ProgressFn | None = None,
    heartbeat_interval: float = 5.0,
    stale_after: float = 60.0,
    poll_interval: float = 1.0,
) -> optuna.Study:
    """Run trials of ``plan`` until the study holds ``n_trials`` finished trials.

    Safe to run in several processes at once against one storage, and to rerun after a crash:
    finished trials are kept, trials of dead workers are redone (see :mod:`gradkit.bench.workers`).
    ``progress(event, info)`` is called with ``"trial_start"``, ``"step"``, ``"seed_done"``,
    ``"trial_done"`` and ``"waiting"`` events.
    """
    direction = "maximize" if plan.task.higher_is_better else "minimize"
    study = optuna.create_study(
        storage=storage,
        study_name=study_name(plan),
        direction=direction,
        sampler=make_sampler(plan),
        load_if_exists=True,
    )
    for key, value in {
        "gradkit_plan": plan.signature(),
        "gradkit_metric": plan.task.metric,
        "gradkit_target": plan.task.target,
        "gradkit_lr_range": list(plan.lr_range()),
    }.items():
        study.set_user_attr(key, value)
    emit = progress or (lambda event, info: None)

    while True:
        workers.reap_stale(study, stale_after)
        done, running = workers.live_trials(study)
        if done >= plan.n_trials:
            break
        if done + running >= plan.n_trials:
            emit("waiting", {"done": done, "running": running})
            time.sleep(poll_interval)
            continue
        trial = study.ask()
        workers.mark_owner(study, trial._trial_id)
        if not workers.claim(study, trial.number, plan.n_trials):
            workers.cancel(study, trial._trial_id)
            continue
        hp = suggest(trial, plan)
        emit("trial_start", {"number": trial.number, "done": done, "hyperparams": hp})
        beat = workers.Heartbeat(study, trial._trial_id, heartbeat_interval)
        finals: list[float] = []
        try:
            for k, seed in enumerate(plan.seeds):

                def on_step(step: int, k: int = k, beat=beat) -> None:
                    beat()
                    emit("step", {"step": step, "seed_index": k})

                result = train_run(
                    plan.task,
                    plan.spec,
                    hp,
                    seed,
                    steps=plan.steps,
                    device=device,
                    schedule=plan.schedule,
                    batch_size=plan.batch_size,
                    eval_every=plan.eval_every,
                    on_step=on_step,
                    callbacks=(
                        make_callbacks(plan.diagnose, plan.diagnose_interval())
                        if plan.diagnose and k == 0
                        else None
                    ),
                )
                trial.set_user_attr(f"run_seed{seed}", result.to_dict())
                finals.append(result.final_val)
                emit("seed_done", {"seed": seed, "final": result.final_val})
        except BaseException as exc:
            try:
                trial.set_user_attr("gradkit_error", f"{type(exc).__name__}: {exc}"[:1000])
                study.tell(trial, state=TrialState.FAIL)
            except Exception:  # noqa: BLE001 - keep the original error
                pass
            raise
        trial.set_user_attr("gradkit_hyperparams", _jsonable(hp))
        value = sum(finals) / len(finals)
        study.tell(trial, value if math.isfinite(value) else float(plan.task.worst))
        emit("trial_done", {"number": trial.number, "value": value})
    return study


def _jsonable(hp: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in hp.items()}
