"""Progress bars (rich) for ``gradkit compare``: one bar per study (trials) and one for the
current run (steps)."""

from __future__ import annotations

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

__all__ = ["CompareProgress"]


class CompareProgress:
    """Context manager; :meth:`study` returns the ``progress(event, info)`` callback of
    :func:`gradkit.bench.execution.study.run_study` for one study."""

    def __init__(self, console: Console | None = None, enabled: bool = True) -> None:
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not enabled,
        )
        self._run: TaskID | None = None

    def __enter__(self) -> CompareProgress:
        self.progress.__enter__()
        self._run = self.progress.add_task("run", total=1, visible=False)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def log(self, message: str) -> None:
        """Print a line above the bars."""
        if self.enabled:
            self.progress.console.print(message)

    def study(self, label: str, n_trials: int, n_seeds: int, steps: int):
        """A bar for one (task, optimizer) study and its event callback."""
        bar = self.progress.add_task(f"{label:<28} trials", total=n_trials)
        progress = self.progress
        run = self._run

        def on_event(event: str, info: dict[str, Any]) -> None:
            if event == "trial_start":
                progress.update(bar, completed=info["done"])
                lr = info["hyperparams"].get("lr", float("nan"))
                progress.reset(run, total=n_seeds * steps, visible=True)
                progress.update(run, description=f"  trial {info['number']} lr={lr:.3g} steps")
            elif event == "step":
                progress.update(run, completed=info["seed_index"] * steps + info["step"])
            elif event == "trial_done":
                progress.advance(bar)
            elif event == "waiting":
                progress.update(bar, completed=info["done"])
                progress.update(run, description="  waiting for other workers", visible=True)

        def finish(done: int) -> None:
            progress.update(bar, completed=done)
            progress.update(run, visible=False)

        return on_event, finish
