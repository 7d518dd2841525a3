"""Progress of ``gradkit compare``: rich bars on a terminal (one per study, one for the current
run), plain timestamped lines otherwise (a log file, ``nohup``, CI), and an estimate of the
total time once the first trial has finished."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

__all__ = ["CompareProgress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"3 min 20 s"``, ``"1 h 05 min"``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        m, s = divmod(round(seconds), 60)
        return f"{m} min {s:02d} s"
    h, rem = divmod(round(seconds), 3600)
    return f"{h} h {rem // 60:02d} min"


class CompareProgress:
    """Context manager; :meth:`study` returns the ``progress(event, info)`` callback of
    :func:`gradkit.bench.execution.study.run_study` for one study.

    Args:
        console: where to print (stderr by default in the command).
        enabled: False prints nothing (``--quiet``).
        plain: plain lines instead of bars (default: when the console is not a terminal).
        every: seconds between two plain step lines.
        total_trials: trials this invocation has to run (all studies), for the estimate.
        workers: worker processes sharing the trials, for the estimate.
        clock: time source (tests).
    """

    def __init__(
        self,
        console: Console | None = None,
        enabled: bool = True,
        *,
        plain: bool | None = None,
        every: float = 30.0,
        total_trials: int = 0,
        workers: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self.plain = (not self.console.is_terminal) if plain is None else plain
        self.every = every
        self.total_trials = total_trials
        self.workers = max(1, workers)
        self.clock = clock
        self.started = clock()
        self.trials_done = 0
        self.trial_seconds: list[float] = []
        self.estimate: float | None = None
        self._last_line = -float("inf")
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            disable=not enabled or self.plain,
        )
        self._run: TaskID | None = None

    def __enter__(self) -> CompareProgress:
        self.progress.__enter__()
        self._run = self.progress.add_task("run", total=1, visible=False)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def log(self, message: str) -> None:
        """Print a line (above the bars on a terminal)."""
        if self.enabled:
            self.progress.console.print(message, highlight=False, soft_wrap=True)

    def _line(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.log(f"[{stamp}] {message}")

    def _trial_finished(self, seconds: float) -> None:
        self.trials_done += 1
        self.trial_seconds.append(seconds)
        # the other workers progress at about the same rate as this one
        left = max(0, self.total_trials - self.trials_done * self.workers)
        mean = sum(self.trial_seconds) / len(self.trial_seconds)
        elapsed = self.clock() - self.started
        self.estimate = elapsed + mean * left / self.workers
        if self.trials_done == 1 and self.total_trials:
            self.log(
                f"first trial took {format_duration(seconds)}; estimated total for "
                f"{self.total_trials} trial(s) with {self.workers} worker(s): about "
                f"{format_duration(self.estimate)} (plus the report)"
            )

    def study(self, label: str, n_trials: int, n_seeds: int, steps: int):
        """A bar (or plain lines) for one (task, optimizer) study and its event callback."""
        bar = self.progress.add_task(f"{label:<28} trials", total=n_trials)
        progress = self.progress
        run = self._run
        state: dict[str, Any] = {"start": None, "number": None}

        def status(seed_index: int, step: int) -> str:
            eta = (
                f"; estimated total {format_duration(self.estimate)}"
                if self.estimate is not None
                else ""
            )
            return (
                f"{label} trial {state['number']} seed {seed_index + 1}/{n_seeds} step "
                f"{step}/{steps}; elapsed {format_duration(self.clock() - self.started)}{eta}"
            )

        def on_event(event: str, info: dict[str, Any]) -> None:
            if event == "trial_start":
                state["start"], state["number"] = self.clock(), info["number"]
                progress.update(bar, completed=info["done"])
                lr = info["hyperparams"].get("lr", float("nan"))
                progress.reset(run, total=n_seeds * steps, visible=True)
                progress.update(run, description=f"  trial {info['number']} lr={lr:.3g} steps")
                if self.plain:
                    self._line(f"{label} trial {info['number']} started (lr={lr:.3g})")
            elif event == "step":
                progress.update(run, completed=info["seed_index"] * steps + info["step"])
                now = self.clock()
                if self.plain and now - self._last_line >= self.every:
                    self._last_line = now
                    self._line(status(info["seed_index"], info["step"]))
            elif event == "trial_done":
                progress.advance(bar)
                if state["start"] is not None:
                    self._trial_finished(self.clock() - state["start"])
                if self.plain:
                    self._line(f"{label} trial {info['number']} done: {info['value']:.4g}")
            elif event == "waiting":
                progress.update(bar, completed=info["done"])
                progress.update(run, description="  waiting for other workers", visible=True)
                now = self.clock()
                if self.plain and now - self._last_line >= self.every:
                    self._last_line = now
                    self._line(f"{label}: waiting for other workers ({info['running']} running)")

        def finish(done: int) -> None:
            progress.update(bar, completed=done)
            progress.update(run, visible=False)
            if self.plain:
                self._line(f"{label}: {done}/{n_trials} trials finished")

        return on_event, finish

    def counter(self, label: str, total: int) -> Callable[[], None]:
        """A bar (or a start and an end line) counting ``total`` units of work; returns the
        function that advances it by one."""
        bar = self.progress.add_task(f"{label:<28} runs", total=total)
        count = [0]
        if self.plain:
            self._line(f"{label}: {total} runs")

        def advance() -> None:
            count[0] += 1
            self.progress.advance(bar)
            if self.plain and count[0] == total:
                self._line(f"{label}: done")

        return advance
