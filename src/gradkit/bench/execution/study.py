"""Running one study: trials of a :class:`~gradkit.bench.protocol.plan.StudyPlan` until the
storage holds the planned number of finished trials (several workers may share it)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from gradkit.bench.execution import workers
from gradkit.bench.execution.diagnose import make_callbacks
from gradkit.bench.execution.storage import mask_secrets
from gradkit.bench.execution.train import train_run
from gradkit.bench.protocol.plan import StudyPlan, make_sampler, study_name, suggest

__all__ = ["ProgressFn", "run_study"]

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
    """Run trials of ``plan`` until the study holds ``n_trials`` usable finished trials (for the
    grid sampler: one on every point of the plan's grid).

    Safe to run in several processes at once against one storage, and to rerun after a crash:
    finished trials are kept, trials of dead workers are redone (see :mod:`gradkit.bench.execution.workers`).
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
        trials = study.get_trials(deepcopy=False)
        done = plan.grid_points_done(trials)
        running = _running(trials, plan)
        if done >= plan.n_trials:
            break
        if done + running >= plan.n_trials:
            emit("waiting", {"done": done, "running": running})
            time.sleep(poll_interval)
            continue
        trial = study.ask()
        workers.mark_owner(study, trial._trial_id)
        if not _claim(study, trial.number, plan):
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
                    source=plan.source,
                    aggregator=plan.aggregator,
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
                trial.set_user_attr(
                    "gradkit_error", mask_secrets(f"{type(exc).__name__}: {exc}")[:1000]
                )
                study.tell(trial, state=TrialState.FAIL)
            except Exception:  # noqa: BLE001 - keep the original error
                pass
            raise
        trial.set_user_attr("gradkit_hyperparams", _jsonable(hp))
        value = sum(finals) / len(finals)
        study.tell(trial, value if math.isfinite(value) else float(plan.task.worst))
        emit("trial_done", {"number": trial.number, "value": value})
    return study


def _running(trials: list[FrozenTrial], plan: StudyPlan) -> int:
    """Running trials that count towards the plan (not cancelled, lr on the plan's grid)."""
    return sum(
        1
        for t in trials
        if t.state == TrialState.RUNNING
        and not t.user_attrs.get("gradkit_cancelled")
        and plan.counts(t)
    )


def _claim(study: optuna.Study, trial_number: int, plan: StudyPlan) -> bool:
    """True if the trials before ``trial_number`` (grid points done, and running trials)
    leave a slot of the plan's budget for it (see :mod:`gradkit.bench.execution.workers`)."""
    ahead = [t for t in study.get_trials(deepcopy=False) if t.number < trial_number]
    return plan.grid_points_done(ahead) + _running(ahead, plan) < plan.n_trials


def _jsonable(hp: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in hp.items()}
