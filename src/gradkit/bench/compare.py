"""``gradkit compare``: tune and train optimizers on tasks, store everything, write a report."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

import gradkit
from gradkit.bench.execution.diagnose import DIAGNOSTICS
from gradkit.bench.execution.storage import StorageError, display_url, open_storage
from gradkit.bench.execution.study import run_study
from gradkit.bench.progress import CompareProgress
from gradkit.bench.protocol.optimizers import DEFAULT_OPTIMIZERS, OptimizerSpec, resolve_optimizers
from gradkit.bench.protocol.plan import SAMPLERS, SEARCHABLE, StudyPlan
from gradkit.bench.tasks import Task, list_tasks
from gradkit.bench.tasks.registry import DEFAULT_TASKS
from gradkit.bench.tasks.testfunctions import TEST_FUNCTIONS
from gradkit.errors import UnknownNameError, canonical_name

__all__ = ["CompareConfig", "UsageError", "load_plugin", "resolve_device", "run_compare"]


class UsageError(Exception):
    """Bad input: the CLI prints the message on one line and exits with status 2."""


@dataclass
class CompareConfig:
    """Everything ``gradkit compare`` was asked to do; ``None`` budgets mean task defaults."""

    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    optimizers: list[str] | None = None
    trials: int | None = None
    seeds: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    eval_every: int | None = None
    schedule: str = "cosine"
    lr_factors: tuple[float, float] | None = None
    search: list[str] = field(default_factory=list)
    sampler: str = "grid"
    storage: str | None = None
    out: str = "gradkit-report"
    study_prefix: str = "gradkit"
    device: str = "auto"
    trajectory_steps: int = 200
    report: bool = True
    run_trials: bool = True
    heartbeat: float = 5.0
    stale_after: float = 60.0
    quiet: bool = False
    command: str = ""
    started_at: float = field(default_factory=time.perf_counter)
    storage_retry: float = 120.0
    calibration_rounds: int = 5
    calibration_steps: int = 10
    diagnose: list[str] = field(default_factory=list)
    diagnose_every: int | None = None


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; a named device is checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if (
        device.type == "cuda"
        and device.index is not None
        and device.index >= torch.cuda.device_count()
    ):
        raise UsageError(
            f"no CUDA device {device.index}; this machine has {torch.cuda.device_count()}"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("device 'mps' requested but MPS is not available; use --device cpu")
    return device


def load_plugin(spec: str) -> None:
    """Import a module (dotted name) or a ``.py`` file that registers tasks."""
    try:
        if spec.endswith(".py") or Path(spec).is_file():
            path = Path(spec)
            if not path.is_file():
                raise UsageError(f"plugin file {spec!r} not found")
            mod_spec = importlib.util.spec_from_file_location(f"gradkit_plugin_{path.stem}", path)
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[mod_spec.name] = module
            mod_spec.loader.exec_module(module)
        else:
            importlib.import_module(spec)
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"cannot load plugin {spec!r}: {type(exc).__name__}: {exc}") from None


def _split_tasks(names: list[str]) -> tuple[list[Task], list[str]]:
    """Training tasks and test functions named by ``names`` (canonical names: case, dashes,
    spaces and underscores alike); an unknown name is a :class:`UsageError` listing the known."""
    tasks: list[Task] = []
    functions: list[str] = []
    known = {canonical_name(t.name): t for t in list_tasks()}
    known_functions = {canonical_name(f): f for f in TEST_FUNCTIONS}
    for name in names:
        key = canonical_name(name)
        if key in known_functions:
            if known_functions[key] not in functions:
                functions.append(known_functions[key])
        elif key in known:
            if known[key] not in tasks:
                tasks.append(known[key])
        else:
            err = UnknownNameError(
                "task", name, [t.name for t in known.values()] + list(TEST_FUNCTIONS)
            )
            raise UsageError(str(err))
    return tasks, functions


def _resolve_optimizers(config: CompareConfig, log) -> list[OptimizerSpec]:
    specs, missing = resolve_optimizers(config.optimizers)
    if config.optimizers and missing:
        from gradkit.bench.protocol.optimizers import registered_optimizers

        err = UnknownNameError("optimizer", ", ".join(missing), registered_optimizers())
        raise UsageError(f"{err} (see gradkit list)")
    if missing:
        log(
            f"[yellow]not registered in this gradkit, skipped:[/] {', '.join(missing)} "
            f"(default list: {', '.join(DEFAULT_OPTIMIZERS)})"
        )
    if not specs:
        raise UsageError("no optimizer to compare; pass --optimizers (see gradkit list)")
    return specs


def _check_budget(config: CompareConfig) -> None:
    for name in ("trials", "seeds", "steps", "batch_size", "eval_every"):
        value = getattr(config, name)
        if value is not None and value < 1:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"impossible budget: {flag} must be at least 1, got {value}")
    if (
        config.steps is not None
        and config.eval_every is not None
        and config.eval_every > config.steps
    ):
        raise UsageError(
            f"impossible budget: --eval-every {config.eval_every} is larger than --steps "
            f"{config.steps}; lower --eval-every or raise --steps"
        )
    if config.trajectory_steps < 1:
        raise UsageError(
            f"impossible budget: --trajectory-steps must be at least 1, got {config.trajectory_steps}"
        )
    if config.lr_factors is not None:
        low, high = config.lr_factors
        if not 0 < low <= high:
            raise UsageError(f"--lr-range LOW HIGH needs 0 < LOW <= HIGH, got {low} {high}")
    if config.sampler not in SAMPLERS:
        raise UsageError(f"unknown sampler {config.sampler!r}; choose from: {', '.join(SAMPLERS)}")
    unknown = [s for s in config.search if s not in SEARCHABLE]
    if unknown:
        raise UsageError(
            f"cannot search {', '.join(unknown)}; choose from: {', '.join(SEARCHABLE)}"
        )
    unknown = [d for d in config.diagnose if d not in DIAGNOSTICS]
    if unknown:
        raise UsageError(
            f"unknown diagnostic {', '.join(map(repr, unknown))}; choose from: "
            f"{', '.join(DIAGNOSTICS)}"
        )
    if config.diagnose_every is not None:
        if config.diagnose_every < 1:
            raise UsageError(
                f"impossible budget: --diagnose-every must be at least 1, got {config.diagnose_every}"
            )
        if config.steps is not None and config.diagnose_every > config.steps:
            raise UsageError(
                f"impossible budget: --diagnose-every {config.diagnose_every} is larger than "
                f"--steps {config.steps}; lower --diagnose-every or raise --steps"
            )
    if config.schedule not in ("cosine", "constant"):
        raise UsageError(f"unknown schedule {config.schedule!r}; choose cosine or constant")
    if config.heartbeat <= 0 or config.stale_after <= config.heartbeat:
        raise UsageError("--stale-after must be larger than --heartbeat, and both positive")


def make_plans(
    config: CompareConfig,
    tasks: list[Task],
    specs: list[OptimizerSpec],
    device: torch.device | None = None,
) -> list[StudyPlan]:
    """One study plan per (task, optimizer), task defaults filled in; the task's fingerprint is
    computed once per task, on ``device`` (default: cpu)."""
    from gradkit.bench.tasks.fingerprint import task_fingerprint

    device = device or torch.device("cpu")
    plans = []
    for task in tasks:
        fingerprint = task_fingerprint(task, device)
        steps = config.steps or task.steps
        eval_every = min(config.eval_every or task.eval_every, steps)
        for spec in specs:
            plans.append(
                StudyPlan(
                    task=task,
                    spec=spec,
                    n_trials=config.trials or task.trials,
                    seeds=list(range(config.seeds or task.seeds)),
                    steps=steps,
                    batch_size=config.batch_size or task.batch_size,
                    eval_every=eval_every,
                    schedule=config.schedule,
                    lr_factors=tuple(config.lr_factors or task.lr_factors),
                    search=list(config.search),
                    sampler=config.sampler,
                    prefix=config.study_prefix,
                    diagnose=list(dict.fromkeys(config.diagnose)),
                    diagnose_every=config.diagnose_every,
                    task_fingerprint=fingerprint,
                    device_kind=device.type,
                )
            )
    return plans


def run_compare(config: CompareConfig, console: Console | None = None) -> Path | None:
    """Run the comparison described by ``config``; return the report's HTML path (or None)."""
    console = console or Console(stderr=True)

    def log(msg: str) -> None:
        if not config.quiet:
            console.print(msg)

    _check_budget(config)
    tasks, functions = _split_tasks(config.tasks)
    specs = _resolve_optimizers(config, log)
    device = resolve_device(config.device)
    # Diverging runs (e.g. Muon at the top of its lr grid) fill the CPU with denormal floats,
    # which made one trial 25x slower; flushing them to zero costs no accuracy that matters.
    torch.set_flush_denormal(True)
    out_dir = Path(config.out)
    storage_url = config.storage or f"sqlite:///{(out_dir / 'studies.db').resolve()}"
    try:
        storage = open_storage(storage_url, retry_for=config.storage_retry) if tasks else None
    except StorageError as exc:
        raise UsageError(str(exc)) from None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    plans = make_plans(config, tasks, specs, device)
    log(
        f"gradkit compare: {len(specs)} optimizer(s) \\[{', '.join(s.name for s in specs)}] on "
        f"{', '.join(config.tasks)}; device {device}; storage "
        f"{display_url(storage_url) if tasks else '-'}"
    )
    ran_now = 0
    with CompareProgress(console, enabled=not config.quiet) as prog:
        for plan in plans if config.run_trials else []:
            label = f"{plan.task.name}/{plan.spec.name}"
            on_event, finish = prog.study(label, plan.n_trials, len(plan.seeds), plan.steps)

            def count(event: str, info: dict[str, Any], on_event=on_event) -> None:
                nonlocal ran_now
                ran_now += event == "trial_done"
                on_event(event, info)

            study = run_study(
                storage,
                plan,
                device,
                progress=count,
                heartbeat_interval=config.heartbeat,
                stale_after=config.stale_after,
            )
            finish(plan.grid_points_done(study.get_trials(deepcopy=False)))
        trajectories = _run_trajectories(functions, specs, config.trajectory_steps, prog)
    if not config.report:
        log(f"done in {elapsed(config):.0f} s (report skipped)")
        return None
    from gradkit.bench.report.page import summary_table, write_report
    from gradkit.bench.report.results import load_result

    by_task: dict[str, list] = {}
    for plan in plans:
        by_task.setdefault(plan.task.name, []).append(load_result(storage, plan))
    timing = _calibrate(config, plans, by_task, device, log)
    stored = [
        r for results in by_task.values() for res in results for t in res.trials for r in t.runs
    ]
    reused = sum(len(res.trials) for results in by_task.values() for res in results)
    meta: dict[str, Any] = {
        "command": config.command,
        "device": str(device),
        "torch": torch.__version__,
        "gradkit": gradkit.__version__,
        "storage": display_url(storage_url) if tasks else "-",
        "budget": "; ".join(
            f"{t.name}: {config.trials or t.trials} trials x {config.seeds or t.seeds} seeds x "
            f"{config.steps or t.steps} steps"
            for t in tasks
        ),
        "trials run by this invocation": ran_now,
        "trials in the report": reused,
        "training wall time stored in those trials (s)": round(
            sum(r.train_time for r in stored), 1
        ),
    }
    if timing:
        meta["how time was measured"] = "; ".join(f"{k}: {v}" for k, v in timing.items())
    if config.diagnose:
        when = (
            f"every {config.diagnose_every} steps"
            if config.diagnose_every
            else "at each evaluation"
        )
        meta["diagnostics"] = f"{', '.join(dict.fromkeys(config.diagnose))} {when}, seed 0"
    # measured last, so that it covers everything this invocation did (trials, calibration)
    meta["wall time of this invocation (s)"] = round(elapsed(config), 1)
    index = write_report(out_dir, by_task, trajectories, meta)
    if not config.quiet:
        from rich.table import Table

        for name, results in by_task.items():
            rows = summary_table(results)
            table = Table(title=f"{name} (ranked)")
            for col in rows[0][:8]:
                table.add_column(col)
            for row in rows[1:]:
                table.add_row(*row[:8])
            console.print(table)
        log(f"report: {index}  (summary: {out_dir / 'summary.md'}); {elapsed(config):.0f} s")
    return index


def elapsed(config: CompareConfig) -> float:
    """Seconds since the invocation started (``config.started_at``, a ``time.perf_counter``
    reading taken by the command line before anything else)."""
    return time.perf_counter() - config.started_at


def _calibrate(
    config: CompareConfig,
    plans: list[StudyPlan],
    by_task: dict[str, list],
    device: torch.device,
    log,
) -> dict[str, str]:
    """Measure each task's per-step times (best configuration of every optimizer, interleaved;
    see :mod:`gradkit.bench.execution.timing`) and put them into the results; returns one
    description per task."""
    from gradkit.bench.execution.timing import calibrate_step_times

    out: dict[str, str] = {}
    if config.calibration_rounds < 1:
        return out
    specs = {(p.task.name, p.spec.name): p for p in plans}
    for name, results in by_task.items():
        entries = []
        for res in results:
            if res.best is not None:
                plan = specs[(name, res.optimizer)]
                hp = {
                    k: tuple(v) if isinstance(v, list) else v
                    for k, v in res.best.hyperparams.items()
                }
                entries.append((res.optimizer, plan.spec, hp))
        if not entries:
            continue
        plan0 = specs[(name, results[0].optimizer)]
        log(f"calibrating the per-step time of {len(entries)} optimizer(s) on {name}")
        cal = calibrate_step_times(
            plan0.task,
            entries,
            device,
            batch_size=plan0.batch_size,
            rounds=config.calibration_rounds,
            steps=config.calibration_steps,
        )
        for res in results:
            res.step_time = cal.step_time.get(res.optimizer)
        out[name] = cal.describe()
    return out


def _run_trajectories(functions, specs, steps, prog) -> dict:
    from gradkit.bench.execution.trajectories import best_trajectory

    out: dict[str, list] = {}
    if not functions:
        return out
    bar = prog.progress.add_task(f"{'test functions':<28} runs", total=len(functions) * len(specs))
    for name in functions:
        for spec in specs:
            out.setdefault(name, []).append(
                best_trajectory(TEST_FUNCTIONS[name], spec, steps=steps)
            )
            prog.progress.advance(bar)
    return out
