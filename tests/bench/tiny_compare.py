"""``gradkit compare`` command lines that run the tiny task (``tiny_task.py``) for the CLI,
resume and worker tests. No side effects: importing this registers no task."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

TINY_PLUGIN = str(Path(__file__).with_name("tiny_task.py"))


def tiny_compare_args(
    out: Path, *, trials: int, steps: int, extra: Sequence[str] = ()
) -> list[str]:
    """Arguments of ``gradkit compare`` training adamw on the tiny task (one seed, quiet), with
    ``trials`` tuning trials of ``steps`` steps each, ``extra`` options and the report in ``out``."""
    return [
        "compare",
        "--plugin",
        TINY_PLUGIN,
        "--task",
        "tiny",
        "--optimizers",
        "adamw",
        "--trials",
        str(trials),
        "--seeds",
        "1",
        "--steps",
        str(steps),
        *extra,
        "--out",
        str(out),
        "--quiet",
    ]


def tiny_worker_command(
    out: Path, storage: str, *, trials: int, extra: Sequence[str] = ()
) -> list[str]:
    """The command line of a ``gradkit compare`` worker process in a fresh interpreter: it runs
    ``trials`` trials of 20 steps (evaluated every 10) of the tiny task in the study at
    ``storage`` and writes no report."""
    args = ["--eval-every", "10", "--storage", storage, *extra, "--no-report"]
    return [
        sys.executable,
        "-m",
        "gradkit.cli",
        *tiny_compare_args(out, trials=trials, steps=20, extra=args),
    ]
