"""Per-step time of each optimizer, measured for all of them together (the calibration pass).

Wall time measured while each study ran depends on what else the machine was doing then: on a
busy machine one optimizer's trials may run alone and another's next to a compile job. So the
report derives time from *steps* and a per-step time measured here: one pass that builds the
task's model once per optimizer (same initialisation, same batches), and then runs them
interleaved: ``rounds`` rounds, in each of which every optimizer (in a rotated order) runs
``steps`` timed training steps (zero_grad, forward, backward, optimizer step, and the device
synchronised) after ``warmup`` untimed ones in the first round. An optimizer's per-step time
is the median over the rounds of its mean step time in that round; load that comes and goes
hits all optimizers alike. An entry with a gradient source or a multi-task aggregator times its
arm's step (:mod:`gradkit.bench.execution.arms`) in place of ``loss.backward()``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gradkit.bench.protocol.optimizers import OptimizerSpec, build_optimizer
from gradkit.bench.tasks.interface import Task

__all__ = ["Calibration", "calibrate_step_times"]


@dataclass
class Calibration:
    """Per-step seconds of each optimizer (NaN where its step failed) and how they were
    measured."""

    step_time: dict[str, float]
    rounds: int
    steps: int
    batch_size: int
    device: str

    def describe(self) -> str:
        """One sentence for the report."""
        return (
            f"per-step time of every optimizer measured in one calibration pass at report time "
            f"on this machine ({self.device}): the task's model and batches of "
            f"{self.batch_size}, all optimizers interleaved, {self.rounds} rounds x "
            f"{self.steps} steps each, median over rounds; time to target = steps to target x "
            "per-step time"
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Any,
    batch: Any,
    closure: bool,
    arm: Any = None,
) -> None:
    if closure:

        def fn() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            if arm is not None:
                return arm.compute(batch)
            loss = data.loss(model, batch)
            loss.backward()
            return loss

        optimizer.step(fn)
    else:
        optimizer.zero_grad(set_to_none=True)
        if arm is not None:
            arm.compute(batch)
        else:
            data.loss(model, batch).backward()
        optimizer.step()


def calibrate_step_times(
    task: Task,
    entries: Sequence[tuple[Any, ...]],
    device: torch.device,
    *,
    batch_size: int | None = None,
    rounds: int = 5,
    steps: int = 10,
    warmup: int = 3,
) -> Calibration:
    """Seconds per training step of each ``(label, spec, hyperparams)`` entry (optionally
    ``(label, spec, hyperparams, source, aggregator)``), measured interleaved (see the module
    docstring)."""
    if rounds < 1 or steps < 1:
        raise ValueError(f"rounds and steps must be >= 1, got {rounds}, {steps}")
    batch_size = batch_size or task.batch_size
    data = task.load_data(device)
    runners: list[tuple[str, OptimizerSpec, torch.nn.Module, torch.optim.Optimizer, Any]] = []
    failed: set[str] = set()
    for label, spec, hp, *rest in entries:
        source, aggregator = (list(rest) + [None, None])[:2]
        torch.manual_seed(0)
        model = task.build_model().to(device)
        try:
            arm = None
            if aggregator is not None or (source is not None and not source.is_backprop):
                from gradkit.bench.execution.arms import build_arm

                arm = build_arm(
                    task, data, model, source=source, aggregator=aggregator, device=device
                )
                model = arm.scored
            model.train()
            trained = arm.trained if arm is not None else model
            runners.append((label, spec, model, build_optimizer(trained, spec, **hp), arm))
        except Exception:  # noqa: BLE001 - reported as NaN
            failed.add(label)
    gen = torch.Generator().manual_seed(30_000)
    batches = [data.sample_batch(gen, batch_size) for _ in range(max(steps, warmup))]
    times: dict[str, list[float]] = {label: [] for label, *_ in runners}
    for r in range(rounds):
        k = r % max(len(runners), 1)
        for label, spec, model, opt, arm in runners[k:] + runners[:k]:
            if label in failed:
                continue
            try:
                if r == 0:
                    for i in range(warmup):
                        _step(model, opt, data, batches[i], spec.needs_closure, arm)
                _sync(device)
                t0 = time.perf_counter()
                for i in range(steps):
                    _step(model, opt, data, batches[i], spec.needs_closure, arm)
                _sync(device)
                times[label].append((time.perf_counter() - t0) / steps)
            except Exception:  # noqa: BLE001 - reported as NaN
                failed.add(label)
    step_time = {
        label: (
            statistics.median(times[label])
            if label not in failed and times.get(label)
            else float("nan")
        )
        for label, *_ in entries
    }
    return Calibration(step_time, rounds, steps, batch_size, str(device))
