"""``gradkit compare``: tune and train optimizers on tasks, store everything, write a report."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

import gradkit
from gradkit.bench.execution.diagnose import DIAGNOSTICS
from gradkit.bench.execution.storage import (
    StorageError,
    check_storage,
    display_url,
    mask_secrets,
    open_storage,
)
from gradkit.bench.execution.study import run_study
from gradkit.bench.progress import CompareProgress, format_duration
from gradkit.bench.protocol.optimizers import DEFAULT_OPTIMIZERS, OptimizerSpec, resolve_optimizers
from gradkit.bench.protocol.plan import SAMPLERS, SEARCHABLE, StudyPlan, study_name
from gradkit.bench.protocol.sources import SourceChoice, parse_aggregators, parse_sources
from gradkit.bench.tasks import Task, list_tasks
from gradkit.bench.tasks.registry import DEFAULT_TASKS
from gradkit.bench.tasks.testfunctions import TEST_FUNCTIONS
from gradkit.errors import UnknownNameError, canonical_name

__all__ = [
    "CompareConfig",
    "UsageError",
    "check_out",
    "default_workers",
    "load_plugin",
    "resolve_device",
    "run_compare",
]


class UsageError(Exception):
    """Bad input: the CLI prints the message on one line and exits with status 2. Credentials
    in the message are masked."""

    def __init__(self, message: object = "") -> None:
        super().__init__(mask_secrets(str(message)))


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
    threads: int | None = None
    workers: int | None = None
    worker: bool = False
    argv: list[str] = field(default_factory=list)
    progress_every: float = 30.0
    plain_progress: bool | None = None
    sources: list[str] | None = None
    aggregators: list[str] | None = None


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers(device: torch.device, trials_to_run: int) -> int:
    """Worker processes for a run: on CPU one per usable core (each with one thread), at most
    4 and at most the trials to run; one on an accelerator."""
    if device.type != "cpu":
        return 1
    return max(1, min(usable_cores(), 4, trials_to_run))


def check_out(out: str) -> Path:
    """Validate the report folder before any work, without creating it: it must be a folder
    this process can write to, or a path whose nearest existing ancestor is one. Returns the
    path; raises :class:`UsageError`."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {out!r} is an existing file, not a folder; use another --out")
    probe = path.absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(
            f"cannot create the report folder --out {out!r}: {str(probe)!r} is a file; "
            "use a folder you can write to"
        )
    verb = "write to" if probe == path.absolute() else "create"
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".gradkit-write-check-"):
            pass
    except OSError as exc:
        raise UsageError(
            f"cannot {verb} the report folder --out {out!r} ({exc.strerror or exc} in "
            f"{str(probe)!r}); use a folder you can write to"
        ) from None
    return path


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
    for name in ("threads", "workers"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name} must be at least 1, got {value}")
    if config.progress_every <= 0:
        raise UsageError(f"--progress-every must be positive, got {config.progress_every}")
    if config.storage_retry < 0:
        raise UsageError(f"--storage-retry must be 0 or more, got {config.storage_retry}")
    if config.heartbeat <= 0 or config.stale_after <= config.heartbeat:
        raise UsageError("--stale-after must be larger than --heartbeat, and both positive")


def is_multitask(task: Task, device: torch.device | None = None) -> bool:
    """True if the task's data has several losses (``task_losses``): a multi-task task, whose
    arms take a :mod:`gradkit.multigrad` aggregator."""
    data = task.load_data(device or torch.device("cpu"))
    return callable(getattr(data, "task_losses", None))


def _arms(config: CompareConfig, task: Task, device: torch.device) -> list[tuple[Any, Any]]:
    """The (source, aggregator) pairs of a task: ``--source`` (default: none named, plain
    backprop) times ``--aggregator`` for a multi-task task (default: sum)."""
    sources = parse_sources(config.sources) if config.sources else [None]
    aggregators: list[str | None] = [None]
    if is_multitask(task, device):
        aggregators = list(parse_aggregators(config.aggregators or ["sum"]))
    return [(s, a) for s in sources for a in aggregators]


def make_plans(
    config: CompareConfig,
    tasks: list[Task],
    specs: list[OptimizerSpec],
    device: torch.device | None = None,
) -> list[StudyPlan]:
    """One study plan per (task, optimizer, source, aggregator) arm, task defaults filled in;
    the task's fingerprint is computed once per task, on ``device`` (default: cpu)."""
    from gradkit.bench.tasks.fingerprint import task_fingerprint

    device = device or torch.device("cpu")
    plans = []
    for task in tasks:
        fingerprint = task_fingerprint(task, device)
        steps = config.steps or task.steps
        eval_every = min(config.eval_every or task.eval_every, steps)
        for spec, (source, aggregator) in (
            (spec, arm) for spec in specs for arm in _arms(config, task, device)
        ):
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
                    source=source,
                    aggregator=aggregator,
                )
            )
    return plans


#: Sources that run no backward pass through the task model's layers.
_NO_BACKWARD = ("forward", "forward_activity", "zeroth_order")


def _source_conflict(spec: OptimizerSpec, source: SourceChoice) -> str | None:
    """Why ``spec``'s optimizer cannot train with ``source`` (not backprop), or None."""
    from gradkit.optim._layer_hooks import LayerHookOptimizer
    from gradkit.optim.registry import get_info

    cls = get_info(spec.name).cls
    if getattr(cls, "curvature_from_closure", False):
        return (
            "it forms curvature products from its closure's gradients, which must be the "
            "loss's true gradient (backprop)"
        )
    if issubclass(cls, LayerHookOptimizer) and source.kind in _NO_BACKWARD:
        return (
            "it reads its statistics from hooks on the layers' forward and backward passes, "
            f"and the {source.kind} source runs no backward pass through them"
        )
    return None


def _check_arms(
    config: CompareConfig,
    tasks: list[Task],
    device: torch.device,
    specs: list[OptimizerSpec] | None = None,
) -> None:
    """Refuse, before any training, a source or aggregator that cannot run on a task, or an
    optimizer that cannot take a source: the message names the task or optimizer and the
    reason."""
    from gradkit.bench.execution.arms import ArmError, check_arm

    try:
        sources = parse_sources(config.sources) if config.sources else []
        aggregators = parse_aggregators(config.aggregators) if config.aggregators else []
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not sources and not aggregators and not config.diagnose:
        return  # plain backprop (a multi-task task gets the sum aggregator, which always runs)
    if config.diagnose and (
        any(not s.is_backprop for s in sources) or any(is_multitask(t, device) for t in tasks)
    ):
        raise UsageError(
            "--diagnose measures the Hessian of the task's loss under backprop; it does not "
            "combine with --source other than backprop nor with multi-task tasks"
        )
    for source in sources:
        for spec in [] if source.is_backprop else specs or []:
            why = _source_conflict(spec, source)
            if why is not None:
                raise UsageError(
                    f"--source {source.name} cannot train with optimizer {spec.name}: {why}"
                )
    for task in tasks:
        multi = is_multitask(task, device)
        if aggregators and not multi:
            raise UsageError(
                f"--aggregator {','.join(aggregators)} cannot run on task {task.name}: it has "
                "one loss (aggregators combine the gradients of a multi-task task's losses; "
                "see --list-tasks)"
            )
        for source in sources or [None]:
            for aggregator in aggregators or (["sum"] if multi else [None]):
                try:
                    check_arm(task, source=source, aggregator=aggregator, device=device)
                except ArmError as exc:
                    what = f"--source {source.name}" if source else f"--aggregator {aggregator}"
                    raise UsageError(f"{what} cannot run on task {task.name}: {exc}") from None


def _kept_trials(storage: Any, plans: list[StudyPlan]) -> dict[str, int]:
    """Usable planned trials each study already holds (``task/optimizer`` -> count)."""
    import optuna

    kept: dict[str, int] = {}
    for plan in plans:
        try:
            study = optuna.load_study(study_name=study_name(plan), storage=storage)
        except KeyError:
            n = 0
        else:
            n = min(plan.n_trials, plan.grid_points_done(study.get_trials(deepcopy=False)))
        kept[f"{plan.task.name}/{plan.arm}"] = n
    return kept


#: How each field of a study's signature is set on the command line.
_SIGNATURE_OPTIONS = {
    "seeds": "--seeds",
    "steps": "--steps",
    "batch_size": "--batch-size",
    "eval_every": "--eval-every",
    "schedule": "--schedule",
    "lr_factors": "--lr-range",
    "lr_centre": "the optimizer's search centre (another gradkit)",
    "search": "--search",
    "sampler": "--sampler",
    "grid": "--sampler",
    "diagnose": "--diagnose",
    "diagnose_every": "--diagnose-every",
    "task_fingerprint": "the task (its model, data or scoring changed)",
    "gradkit": "the gradkit version",
    "device": "--device",
}


def _show(key: str, value: Any) -> str:
    if key == "seeds" and isinstance(value, list):
        return str(len(value))
    if isinstance(value, list):
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) or "none"
    return "none" if value is None else str(value)


def _mismatch(storage: Any, plans: list[StudyPlan]) -> str:
    """Why no study matches ``plans``: the options in which the studies of the same prefix,
    task and optimizer differ from them (empty when there are none)."""
    import optuna

    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    lines: list[str] = []
    for plan in plans:
        head = f"{plan.prefix}:{plan.task.name}:{plan.study_label}:"
        mine = plan.signature()
        for summ in summaries:
            if not summ.study_name.startswith(head):
                continue
            theirs = summ.user_attrs.get("gradkit_plan")
            if not isinstance(theirs, dict):
                continue
            diffs = []
            for key in sorted(set(mine) | set(theirs)):
                if key in ("task", "optimizer") or mine.get(key) == theirs.get(key):
                    continue
                flag = _SIGNATURE_OPTIONS.get(key, key)
                diffs.append(
                    f"{flag} {_show(key, theirs.get(key))} in the stored study, "
                    f"{_show(key, mine.get(key))} now"
                )
            if diffs:
                lines.append((f"{plan.task.name}/{plan.arm}", "; ".join(diffs)))
    grouped: dict[str, list[str]] = {}
    for who, what in lines:
        if who not in grouped.setdefault(what, []):
            grouped[what].append(who)
    return " | ".join(f"{', '.join(who)}: {what}" for what, who in grouped.items())


def _spawn_workers(config: CompareConfig, storage_url: str, n: int) -> list[subprocess.Popen]:
    """Start ``n`` worker processes running the same comparison on the same storage (trials
    only, one thread each): they share the studies' trials with this process."""
    if n < 1:
        return []
    cmd = [
        sys.executable,
        "-m",
        "gradkit.cli",
        *config.argv,
        "--worker",
        "--storage",
        storage_url,
        "--threads",
        str(config.threads or 1),
    ]
    return [
        subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(n)
    ]


def _stop_workers(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_compare(config: CompareConfig, console: Console | None = None) -> Path | None:
    """Run the comparison described by ``config``; return the report's HTML path (or None).

    Denormal floats are flushed to zero while it runs (diverging runs filled the CPU with
    denormals, which made one trial 25x slower) and no longer once it returns: the setting is
    process-wide, and a caller's own computations must not inherit it.
    """
    torch.set_flush_denormal(True)
    try:
        return _run_compare(config, console)
    finally:
        torch.set_flush_denormal(False)


def _run_compare(config: CompareConfig, console: Console | None = None) -> Path | None:
    """Run the comparison described by ``config``; return the report's HTML path (or None)."""
    console = console or Console(stderr=True)
    quiet = config.quiet or config.worker

    def log(msg: str) -> None:
        if not quiet:
            console.print(mask_secrets(msg), highlight=False, soft_wrap=True)

    # everything is checked before any training
    _check_budget(config)
    tasks, functions = _split_tasks(config.tasks)
    specs = _resolve_optimizers(config, log)
    device = resolve_device(config.device)
    _check_arms(config, tasks, device, specs)
    out_dir = check_out(config.out) if not config.worker else Path(config.out)
    default_db = out_dir / "studies.db"
    if config.storage is not None:
        try:
            storage_url = check_storage(config.storage, timeout=10.0)
        except StorageError as exc:
            raise UsageError(str(exc)) from None
    else:
        storage_url = f"sqlite:///{default_db.resolve()}"
    if not config.run_trials and tasks and config.storage is None and not default_db.exists():
        raise UsageError(
            f"--report-only: no study database at {default_db}; run the comparison first "
            "(the same command without --report-only), or give its --out or --storage"
        )
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    elif device.type == "cpu":
        # one thread per worker: torch's default (a thread per core) oversubscribes a shared
        # machine, and several single-thread workers use the cores better
        torch.set_num_threads(1)
    try:
        storage = open_storage(storage_url, retry_for=config.storage_retry) if tasks else None
    except StorageError as exc:
        raise UsageError(str(exc)) from None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    plans = make_plans(config, tasks, specs, device)
    kept = _kept_trials(storage, plans) if tasks else {}
    if not config.run_trials and plans and not any(kept.values()):
        why = _mismatch(storage, plans)
        raise UsageError(
            f"--report-only: no study in {display_url(storage_url)} matches these options"
            + (
                f"; studies found with other options: {why}. Give --report-only the options "
                "of the run"
                if why
                else "; none of these tasks and optimizers was run with this --study-prefix "
                "there: run the comparison first"
            )
        )
    planned = sum(p.n_trials for p in plans)
    to_run = max(0, planned - sum(kept.values())) if config.run_trials else 0
    # a --no-report run is one worker of a set the user starts: one process unless told
    workers = config.workers or (default_workers(device, to_run) if config.report else 1)
    workers = max(1, min(workers, to_run)) if to_run else 1
    log(
        f"gradkit compare: {len(specs)} optimizer(s) \\[{', '.join(s.name for s in specs)}] on "
        f"{', '.join(config.tasks)}; device {device}; storage "
        f"{display_url(storage_url) if tasks else '-'}"
    )
    if tasks:
        budget = "; ".join(
            f"{t.name}: {config.trials or t.trials} trials x {config.seeds or t.seeds} seeds x "
            f"{config.steps or t.steps} steps per "
            + (
                f"arm ({sum(p.task is t for p in plans)} arms: "
                f"{', '.join(p.arm for p in plans if p.task is t)})"
                if any(p.source is not None or p.aggregator is not None for p in plans)
                else "optimizer"
            )
            for t in tasks
        )
        log(
            f"budget: {budget}; {planned} trials in all, {to_run} to run now; "
            f"{workers} worker process(es) x {torch.get_num_threads()} thread(s) "
            f"({usable_cores()} usable core(s); --workers, --threads)"
        )
    if sum(kept.values()) and config.run_trials:
        log(
            f"resuming: kept {sum(kept.values())} finished trial(s) from the storage ("
            + ", ".join(f"{k} {v}" for k, v in kept.items() if v)
            + f"); {to_run} left to run"
        )
    ran_now = 0
    helpers = (
        _spawn_workers(config, storage_url, workers - 1)
        if config.run_trials and not config.worker
        else []
    )
    try:
        with CompareProgress(
            console,
            enabled=not quiet,
            plain=config.plain_progress,
            every=config.progress_every,
            total_trials=to_run,
            workers=workers,
        ) as prog:
            for plan in plans if config.run_trials else []:
                label = f"{plan.task.name}/{plan.arm}"
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
            trajectories = (
                {}
                if config.worker
                else _run_trajectories(functions, specs, config.trajectory_steps, prog)
            )
            failed = []
            for proc in helpers:
                _, err = proc.communicate()
                if proc.returncode != 0:
                    failed.append((err.strip().splitlines() or ["no message"])[-1])
            if failed:
                # its unfinished trials belong to a dead process on this host: redo them here
                prog.log(
                    mask_secrets(
                        f"a worker process failed ({failed[0]}); finishing its trials in this one"
                    )
                )
                for plan in plans:
                    on_event, finish = prog.study(
                        f"{plan.task.name}/{plan.arm}",
                        plan.n_trials,
                        len(plan.seeds),
                        plan.steps,
                    )
                    study = run_study(
                        storage,
                        plan,
                        device,
                        progress=on_event,
                        heartbeat_interval=config.heartbeat,
                        stale_after=config.stale_after,
                    )
                    finish(plan.grid_points_done(study.get_trials(deepcopy=False)))
    finally:
        _stop_workers(helpers)
    if not config.report or config.worker:
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
        "command": mask_secrets(config.command),
        "device": str(device),
        "torch": torch.__version__,
        "gradkit": gradkit.__version__,
        "storage": display_url(storage_url) if tasks else "-",
        "budget": "; ".join(
            f"{t.name}: {config.trials or t.trials} trials x {config.seeds or t.seeds} seeds x "
            f"{config.steps or t.steps} steps"
            + (
                f" per arm ({', '.join(p.arm for p in plans if p.task is t)})"
                if any(p.source is not None or p.aggregator is not None for p in plans)
                else ""
            )
            for t in tasks
        ),
        "workers": f"{workers} process(es) x {torch.get_num_threads()} thread(s)",
        "trials run by this invocation": max(ran_now, reused - sum(kept.values())),
        "trials kept from the storage": sum(kept.values()),
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
    if not quiet:
        from rich.table import Table

        from gradkit.bench.report.page import verdict

        for name, results in by_task.items():
            rows = summary_table(results)
            if console.is_terminal:
                table = Table(title=f"{name} (ranked)")
                for col in rows[0][:8]:
                    table.add_column(col)
                for row in rows[1:]:
                    table.add_row(*row[:8])
                console.print(table)
            else:  # a log file: one line per row, never wrapped
                log(f"{name} (ranked):")
                for row in rows:
                    log("  " + " | ".join(row[:8]))
            log(verdict(results))
        log(
            f"report: {index}  (summary: {out_dir / 'summary.md'}); "
            f"{format_duration(elapsed(config))}"
        )
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
    specs = {(p.task.name, p.arm): p for p in plans}
    for name, results in by_task.items():
        entries = []
        for res in results:
            if res.best is not None:
                plan = specs[(name, res.optimizer)]
                hp = {
                    k: tuple(v) if isinstance(v, list) else v
                    for k, v in res.best.hyperparams.items()
                }
                entries.append((res.optimizer, plan.spec, hp, plan.source, plan.aggregator))
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
    advance = prog.counter("test functions", len(functions) * len(specs))
    for name in functions:
        for spec in specs:
            out.setdefault(name, []).append(
                best_trajectory(TEST_FUNCTIONS[name], spec, steps=steps)
            )
            advance()
    return out
