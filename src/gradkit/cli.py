"""The ``gradkit`` command: ``gradkit compare`` (the optimizer comparison) and ``gradkit list``."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

#: When this process started running gradkit (the "invocation took" figure counts from here).
_STARTED = time.perf_counter()

__all__ = ["build_parser", "main"]

_COMPARE_HELP = """\
Compare optimizers fairly on real tasks and write a report.

Every optimizer gets the same number of tuning trials (Optuna); each trial trains one
hyperparameter configuration over the same seeds (same initialisations, same batches), and its
learning rate is searched on a log scale over [LOW, HIGH] times the centre of the optimizer's
well-tuned range. The budget is printed first, then an estimate of the total time after the
first trial; results are compared on the same seeds (paired tests, ties for first named).
Every trial and curve is stored in a database (SQLite file in the report folder by default, or any
SQLAlchemy URL, e.g. PostgreSQL shared by several workers). Rerunning the same command resumes:
finished trials are kept, interrupted ones are redone. Raising --trials extends a study.

The report folder gets index.html, summary.md (ranking table), results.json and PNG figures:
loss curves with seed bands, learning-rate sensitivity, time to target, test-function
trajectories. --diagnose sharpness adds the top Hessian eigenvalue against 2/lr during training
(seed 0 of every trial). --source makes the gradient source a dimension (every optimizer with
every source; the report adds passes per step); --aggregator does the same with multi-task
aggregators on multi-task tasks.
"""

_COMPARE_EPILOG = """\
examples:
  gradkit compare                                   # default: 5 optimizers, MNIST-1D CNN + test functions
  gradkit compare --task mnist1d-mlp,stdlib-charlm --optimizers adamw,lion --trials 6 --seeds 3
  gradkit compare --storage postgresql+psycopg2://user:pw@db-host/gradkit --no-report   # a worker
  gradkit compare --task mnist1d-cnn -o adamw,lion --diagnose sharpness --diagnose-every 50
  gradkit compare --task mnist1d-mlp -o adamw --source backprop,forward:8,dfa,noprop
  gradkit compare --task mnist1d-multitask -o adamw --aggregator sum,pcgrad,upgrad
  gradkit compare --list-tasks
"""


def _csv(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _glossary(entries: Mapping[str, str]) -> str:
    """``name: meaning`` of every entry, joined by ``; `` (for a help text)."""
    return "; ".join(f"{k}: {v}" for k, v in entries.items())


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error that says what to do (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``gradkit`` command."""
    from gradkit.bench.execution.diagnose import DIAGNOSTICS
    from gradkit.bench.protocol.optimizers import DEFAULT_OPTIMIZERS
    from gradkit.bench.protocol.plan import SAMPLERS, SEARCHABLE
    from gradkit.bench.tasks.registry import DEFAULT_TASKS

    parser = _Parser(
        prog="gradkit", description="gradkit: the gradient side of training.", allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="command", metavar="{compare,list}", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser(
        "compare",
        help="compare optimizers on tasks and write a report",
        description=_COMPARE_HELP,
        epilog=_COMPARE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    g = p.add_argument_group("what to compare")
    g.add_argument(
        "--task",
        "--tasks",
        dest="tasks",
        type=_csv,
        default=list(DEFAULT_TASKS),
        help="comma-separated tasks: training tasks (see --list-tasks) and/or the test functions "
        f"rosenbrock, rastrigin, quadratic (default: {','.join(DEFAULT_TASKS)})",
    )
    g.add_argument(
        "--optimizers",
        "-o",
        type=_csv,
        default=None,
        help="comma-separated registered optimizers (see `gradkit list`); default: "
        f"{','.join(DEFAULT_OPTIMIZERS)}, those registered in this gradkit",
    )
    g.add_argument(
        "--source",
        "--sources",
        dest="sources",
        type=_csv,
        default=None,
        help="comma-separated gradient sources, each an arm with every optimizer: backprop, "
        "forward[:K], forward_local, forward_activity[:K], zeroth_order[:K], dfa, "
        "forward_forward, noprop, counter_current (K random directions, default 1); the report "
        "adds passes per step. Default: backprop only, as before. A source that cannot run on "
        "a task, or with an optimizer, is refused before training (see docs/compare.md)",
    )
    g.add_argument(
        "--aggregator",
        "--aggregators",
        dest="aggregators",
        type=_csv,
        default=None,
        help="comma-separated multi-task aggregators for multi-task tasks (mnist1d-multitask): "
        "sum, mean, pcgrad, mgda, upgrad, gradnorm (default: sum)",
    )
    g.add_argument("--list-tasks", action="store_true", help="list the training tasks and exit")
    g.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE_OR_FILE",
        help="import a module or .py file that registers extra tasks (repeatable); see docs/compare.md",
    )
    g = p.add_argument_group("budget (default: each task's own; see --list-tasks)")
    g.add_argument(
        "--trials", type=int, help="tuning trials per optimizer (the same for every optimizer)"
    )
    g.add_argument("--seeds", type=int, help="seeds per configuration (seeds 0..N-1)")
    g.add_argument("--steps", type=int, help="optimizer steps per run")
    g.add_argument("--batch-size", type=int, help="training batch size")
    g.add_argument("--eval-every", type=int, help="evaluate the validation metric every N steps")
    g.add_argument(
        "--schedule",
        choices=("cosine", "constant"),
        default="cosine",
        help="learning-rate schedule, the same for all (cosine: 5%% linear warmup then cosine to 0)",
    )
    g.add_argument(
        "--trajectory-steps",
        type=int,
        default=200,
        help="steps per run on the test functions (default 200)",
    )
    g = p.add_argument_group("search")
    g.add_argument(
        "--lr-range",
        nargs=2,
        type=float,
        metavar=("LOW", "HIGH"),
        dest="lr_factors",
        help="search the lr over [LOW, HIGH] x each optimizer's search centre, the middle of its "
        "well-tuned range (default: the task's own, see --list-tasks)",
    )
    g.add_argument(
        "--search",
        type=_csv,
        default=[],
        help="more hyperparameters to search: " + _glossary(SEARCHABLE),
    )
    g.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default="grid",
        help="Optuna sampler: grid (log-spaced lr grid with --trials points, default), tpe, random",
    )
    g = p.add_argument_group("diagnostics (seed 0 of every trial; see docs/compare.md)")
    g.add_argument(
        "--diagnose",
        type=_csv,
        default=[],
        metavar="NAME[,NAME]",
        help="comma-separated diagnostics measured during training on a fixed batch: "
        + _glossary(DIAGNOSTICS)
        + ". Part of the study name: a study run with other --diagnose options is a new study",
    )
    g.add_argument(
        "--diagnose-every",
        type=int,
        metavar="N",
        help="measure the diagnostics every N steps (default: the evaluation interval)",
    )
    g = p.add_argument_group("storage, workers, output")
    g.add_argument(
        "--storage",
        metavar="URL",
        help="SQLAlchemy URL or SQLite file path (default: sqlite:///OUT/studies.db); "
        "a PostgreSQL URL lets several workers share the studies",
    )
    g.add_argument("--study-prefix", default="gradkit", help="prefix of the Optuna study names")
    g.add_argument(
        "--out", default="gradkit-report", help="report folder (default: ./gradkit-report)"
    )
    g.add_argument(
        "--no-report", dest="report", action="store_false", help="run trials only (a worker)"
    )
    g.add_argument(
        "--report-only",
        dest="run_trials",
        action="store_false",
        help="run no trial; write the report from what the storage holds (same options as the run)",
    )
    g.add_argument(
        "--heartbeat",
        type=float,
        default=5.0,
        help="seconds between a running trial's heartbeats in the database (default 5)",
    )
    g.add_argument(
        "--stale-after",
        type=float,
        default=60.0,
        help="a running trial whose worker sent no heartbeat for this long is redone (default 60); "
        "trials of dead processes on this host are redone at once",
    )
    g.add_argument(
        "--device",
        default="auto",
        help="auto (cuda if available, else cpu), cpu, cuda, cuda:N, mps",
    )
    g.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads per worker process (default on CPU: 1, which uses a shared or "
        "small machine best; on an accelerator: torch's choice)",
    )
    g.add_argument(
        "--workers",
        type=int,
        help="worker processes sharing the trials (default on CPU: one per usable core, at "
        "most 4; on an accelerator: 1)",
    )
    g.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bars or tables")
    g.add_argument(
        "--progress-every",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="when the output is not a terminal (a log file, nohup, CI): seconds between two "
        "plain progress lines (default 30)",
    )
    g.add_argument(
        "--storage-retry",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="when the database connection is lost (e.g. a PostgreSQL restart), retry with "
        "backoff for this long before giving up (default 120)",
    )
    g.add_argument(
        "--debug",
        action="store_true",
        help="on a storage error, print the full traceback before the one-line message",
    )

    sub.add_parser(
        "list", help="list the registered optimizers", description="List the registered optimizers."
    )
    return parser


def _print_table(title: str, rows: list[list[str]]) -> None:
    """Print ``rows`` (the first is the header) as an aligned plain-text table."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(title)
    for k, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))


def _list_tasks() -> None:
    from gradkit.bench.tasks import list_tasks
    from gradkit.bench.tasks.testfunctions import TEST_FUNCTIONS

    rows = [["task", "metric", "target", "steps", "trials x seeds", "lr range", "description"]]
    for t in list_tasks():
        direction = "higher" if t.higher_is_better else "lower"
        rows.append(
            [
                t.name,
                f"{t.metric} ({direction} better)",
                f"{t.target:g}",
                str(t.steps),
                f"{t.trials} x {t.seeds}",
                f"{t.lr_factors[0]:g}-{t.lr_factors[1]:g} x centre",
                t.description,
            ]
        )
    for f in TEST_FUNCTIONS.values():
        rows.append(
            [f.name, "final f(x, y)", "-", "200", "8 lrs", "0.1-3000 x default", f.description]
        )
    _print_table("gradkit compare tasks", rows)


def _list_optimizers() -> None:
    from gradkit import list_optimizers

    rows = [["name", "paper", "arXiv", "closure", "defaults"]]
    for info in list_optimizers():
        defaults = ", ".join(f"{k}={v}" for k, v in info.defaults.items())
        rows.append(
            [
                info.name,
                info.paper_title or "",
                info.arxiv_id or "",
                "yes" if info.needs_closure else "",
                defaults,
            ]
        )
    _print_table("gradkit optimizers", rows)


#: Import names of what the ``compare`` extra installs, with the package that provides each.
COMPARE_MODULES: dict[str, str] = {
    "optuna": "optuna",
    "sqlalchemy": "sqlalchemy",
    "matplotlib": "matplotlib",
    "rich": "rich",
    "scipy": "scipy",
    "sklearn": "scikit-learn",
    "mnist1d": "mnist1d",
}


def missing_compare_packages() -> list[str]:
    """The packages of the ``compare`` extra that are not installed."""
    import importlib.util

    missing = []
    for module, package in COMPARE_MODULES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(package)
    return missing


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gradkit`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "list":
        _list_optimizers()
        return 0

    missing = missing_compare_packages()
    if missing:
        print(
            f"gradkit compare: error: needs the optional packages {', '.join(missing)}; "
            'install them with: pip install "gradkit[compare]"',
            file=sys.stderr,
        )
        return 2

    from gradkit.bench.compare import CompareConfig, UsageError, load_plugin, run_compare
    from gradkit.bench.execution.storage import mask_secrets

    try:
        for plugin in args.plugin:
            load_plugin(plugin)
        if args.list_tasks:
            _list_tasks()
            return 0
        config = CompareConfig(
            tasks=args.tasks,
            optimizers=args.optimizers,
            trials=args.trials,
            seeds=args.seeds,
            steps=args.steps,
            batch_size=args.batch_size,
            eval_every=args.eval_every,
            schedule=args.schedule,
            lr_factors=tuple(args.lr_factors) if args.lr_factors else None,
            search=args.search,
            sampler=args.sampler,
            storage=args.storage,
            out=args.out,
            study_prefix=args.study_prefix,
            device=args.device,
            trajectory_steps=args.trajectory_steps,
            report=args.report,
            run_trials=args.run_trials,
            heartbeat=args.heartbeat,
            stale_after=args.stale_after,
            quiet=args.quiet,
            diagnose=args.diagnose,
            diagnose_every=args.diagnose_every,
            command=mask_secrets("gradkit " + shlex.join(argv)),
            started_at=_STARTED,
            storage_retry=args.storage_retry,
            threads=args.threads,
            workers=args.workers,
            worker=args.worker,
            argv=argv,
            progress_every=args.progress_every,
            sources=args.sources,
            aggregators=args.aggregators,
        )
        run_compare(config)
    except UsageError as exc:
        print(f"gradkit compare: error: {mask_secrets(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gradkit compare: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - storage failures end in one line, bugs do not
        from gradkit.bench.execution.storage import describe_storage_error

        url = args.storage or str(Path(args.out) / "studies.db")
        err = describe_storage_error(exc, url)
        if err is None:
            # a bug: the traceback, with any credential it quotes masked
            print(mask_secrets(traceback.format_exc()), file=sys.stderr, end="")
            print(
                f"gradkit compare: internal error: {mask_secrets(f'{type(exc).__name__}: {exc}')}"
                " (please report it with the traceback above)",
                file=sys.stderr,
            )
            return 1
        if args.debug:
            print(mask_secrets(traceback.format_exc()), file=sys.stderr, end="")
        print(f"gradkit compare: error: {mask_secrets(str(err))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
