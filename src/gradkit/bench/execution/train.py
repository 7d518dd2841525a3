"""One training run: a task, an optimizer configuration and a seed -> curves and metrics."""

from __future__ import annotations

import math
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from gradkit.bench.execution.diagnose import StepInfo, TrainCallback
from gradkit.bench.protocol.optimizers import OptimizerSpec, build_optimizer
from gradkit.bench.protocol.sources import SourceChoice
from gradkit.bench.tasks.interface import Task

__all__ = ["RunResult", "lr_multiplier", "train_run"]


@dataclass
class RunResult:
    """Everything measured in one run (JSON-serialisable through :meth:`to_dict`).

    Curves are sampled at evaluation points: ``steps[i]``, ``wall[i]`` (training seconds, eval
    time excluded), ``train_loss[i]`` (mean training loss since the previous point) and
    ``val[i]`` (validation metric). ``diagnostics`` maps each training-loop callback's name to
    its records (JSON-serialisable dicts, see :mod:`gradkit.bench.execution.diagnose`); empty when the
    run had no callback. ``passes`` counts the passes over the model that computed the
    gradients during the run (``forward``, ``backward``, ``jvp``; for backprop one forward and
    one backward per loss evaluation), and under ``steps`` the optimizer steps taken.
    ``task_metrics``: the final validation metric of each task of a multi-task task
    (empty otherwise).
    """

    seed: int
    steps: list[int] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val: list[float] = field(default_factory=list)
    final_val: float = math.nan
    best_val: float = math.nan
    steps_to_target: int | None = None
    time_to_target: float | None = None
    train_time: float = 0.0
    step_time_share: float = 0.0
    peak_memory_bytes: int = 0
    peak_memory_kind: str = ""
    optimizer_state_bytes: int = 0
    diverged: bool = False
    diagnostics: dict[str, list[Any]] = field(default_factory=dict)
    passes: dict[str, int] = field(default_factory=dict)
    task_metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (non-finite final/best values as ``None``)."""
        d = asdict(self)
        for key in ("final_val", "best_val"):
            if not math.isfinite(d[key]):
                d[key] = None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunResult:
        """Inverse of :meth:`to_dict`; unknown keys are ignored, missing ones get defaults."""
        d = dict(d)
        for key in ("final_val", "best_val"):
            if d.get(key) is None:
                d[key] = math.nan
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def lr_multiplier(step: int, total: int, schedule: str, warmup_frac: float = 0.05) -> float:
    """Learning-rate multiplier: ``constant``, or ``cosine`` (linear warmup, cosine to 0)."""
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    warmup = max(1, int(warmup_frac * total))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _state_bytes(optimizer: torch.optim.Optimizer) -> int:
    total = 0
    for state in optimizer.state.values():
        for v in state.values() if isinstance(state, dict) else ():
            if isinstance(v, torch.Tensor):
                total += v.numel() * v.element_size()
    return total


def _rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024


class _Callbacks:
    """Calls the callbacks due after a step; keeps their CUDA memory out of the run's peak."""

    def __init__(
        self,
        callbacks: list[TrainCallback],
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        data: Any,
        seed: int,
        batch_size: int,
        device: torch.device,
    ) -> None:
        names = [cb.name for cb in callbacks]
        if len(set(names)) != len(names):
            raise ValueError(f"callback names must be unique, got {names}")
        self.callbacks, self.model, self.optimizer, self.data = callbacks, model, optimizer, data
        self.seed, self.batch_size, self.device = seed, batch_size, device
        self.peak_outside = 0  # CUDA max allocated by training, measured before each call
        self._fixed: list[Any] = []

    def fixed_batch(self) -> Any:
        """The fixed diagnostic batch, drawn once from its own generator."""
        if not self._fixed:
            gen = torch.Generator().manual_seed(20_000 + self.seed)
            self._fixed.append(self.data.sample_batch(gen, self.batch_size))
        return self._fixed[0]

    def __call__(self, step: int) -> None:
        due = [cb for cb in self.callbacks if step % cb.every == 0]
        if not due:
            return
        cuda = self.device.type == "cuda"
        if cuda:
            _sync(self.device)
            self.peak_outside = max(
                self.peak_outside, int(torch.cuda.max_memory_allocated(self.device))
            )
        lr = float(self.optimizer.param_groups[0]["lr"])
        info = StepInfo(step, self.model, self.optimizer, lr, self.data, self.fixed_batch)
        for cb in due:
            cb(info)
        if cuda:
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def records(self) -> dict[str, list[Any]]:
        return {cb.name: cb.records() for cb in self.callbacks}


def train_run(
    task: Task,
    spec: OptimizerSpec,
    hyperparams: dict[str, Any],
    seed: int,
    *,
    steps: int,
    device: torch.device,
    schedule: str = "cosine",
    batch_size: int | None = None,
    eval_every: int | None = None,
    on_step: Callable[[int], None] | None = None,
    callbacks: Sequence[TrainCallback] | None = None,
    diagnostic_batch_size: int | None = None,
    source: SourceChoice | None = None,
    aggregator: str | None = None,
) -> RunResult:
    """Train ``task``'s model with ``spec`` for ``steps`` steps from ``seed``.

    The seed fixes the initialisation and the order of batches, so every optimizer sees the
    same data for the same seed. A closure is passed to ``step`` when the optimizer needs one.
    A run whose loss becomes NaN or infinite stops and records ``task.worst``.

    ``callbacks`` (see :class:`gradkit.bench.diagnose.TrainCallback`) are called after every
    ``callback.every``-th step with a :class:`~gradkit.bench.diagnose.StepInfo`; their records
    end up in ``RunResult.diagnostics``. Their time is left out of the training time and the
    step-time share. Their fixed batch (``diagnostic_batch_size`` examples, default
    ``batch_size``) is drawn from its own generator, so training is the same with or without
    callbacks. ``on_step(step)`` is called after the callbacks.

    ``source`` (a gradient source other than backprop) or ``aggregator`` (a multi-task task's
    aggregator) replace ``loss.backward()`` by the step of
    :func:`gradkit.bench.execution.arms.build_arm`; without them the step is exactly the
    backprop step above.
    """
    batch_size = batch_size or task.batch_size
    eval_every = max(1, min(eval_every or task.eval_every, steps))
    data = task.load_data(device)
    torch.manual_seed(seed)
    model = task.build_model().to(device)
    arm = None
    if aggregator is not None or (source is not None and not source.is_backprop):
        from gradkit.bench.execution.arms import build_arm

        arm = build_arm(
            task, data, model, source=source, aggregator=aggregator, seed=seed, device=device
        )
        model = arm.scored
    optimizer = build_optimizer(arm.trained if arm else model, spec, **hyperparams)
    evaluations = 0  # loss evaluations of the backprop step (closure calls included)
    steps_run = 0
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    gen = torch.Generator().manual_seed(10_000 + seed)
    result = RunResult(seed=seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cbs = list(callbacks or ())
    if cbs:
        run_callbacks = _Callbacks(
            cbs, model, optimizer, data, seed, diagnostic_batch_size or batch_size, device
        )

    train_time = step_time = 0.0
    loss_sum, loss_count = 0.0, 0
    model.train()
    for step in range(steps):
        mult = lr_multiplier(step, steps, schedule)
        for group, lr in zip(optimizer.param_groups, base_lrs):
            group["lr"] = lr * mult
        batch = data.sample_batch(gen, batch_size)
        _sync(device)
        t0 = time.perf_counter()
        if spec.needs_closure:

            def closure(batch=batch):
                nonlocal evaluations
                optimizer.zero_grad(set_to_none=True)
                if arm is not None:
                    return arm.compute(batch)
                evaluations += 1
                loss = data.loss(model, batch)
                loss.backward()
                return loss

            t1 = time.perf_counter()
            loss = optimizer.step(closure)
            if loss is None:
                raise RuntimeError(f"{spec.name}.step(closure) returned None; expected the loss")
        elif arm is not None:
            optimizer.zero_grad(set_to_none=True)
            loss = arm.compute(batch)
            _sync(device)
            t1 = time.perf_counter()
            optimizer.step()
        else:
            optimizer.zero_grad(set_to_none=True)
            evaluations += 1
            loss = data.loss(model, batch)
            loss.backward()
            _sync(device)
            t1 = time.perf_counter()
            optimizer.step()
        _sync(device)
        t2 = time.perf_counter()
        train_time += t2 - t0
        step_time += t2 - t1
        steps_run += 1
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            result.diverged = True
            break
        loss_sum += loss_value
        loss_count += 1
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            model.eval()
            value = float(data.evaluate(model))
            model.train()
            if not math.isfinite(value):
                result.diverged = True
                break
            result.steps.append(step + 1)
            result.wall.append(train_time)
            result.train_loss.append(loss_sum / max(loss_count, 1))
            result.val.append(value)
            loss_sum, loss_count = 0.0, 0
            if result.steps_to_target is None and task.reached(value):
                result.steps_to_target = step + 1
                result.time_to_target = train_time
        if cbs:
            run_callbacks(step + 1)
        if on_step is not None:
            on_step(step + 1)

    if cbs:
        result.diagnostics = run_callbacks.records()
    result.passes = (
        arm.passes() if arm is not None else {"forward": evaluations, "backward": evaluations}
    )
    result.passes["steps"] = steps_run
    if not result.diverged and callable(getattr(data, "evaluate_tasks", None)):
        model.eval()
        result.task_metrics = {k: float(v) for k, v in data.evaluate_tasks(model).items()}
        model.train()
    result.train_time = train_time
    result.step_time_share = step_time / train_time if train_time > 0 else 0.0
    result.optimizer_state_bytes = _state_bytes(optimizer)
    if device.type == "cuda":
        result.peak_memory_bytes = int(torch.cuda.max_memory_allocated(device))
        if cbs:
            result.peak_memory_bytes = max(result.peak_memory_bytes, run_callbacks.peak_outside)
        result.peak_memory_kind = "cuda max allocated"
    else:
        result.peak_memory_bytes = _rss_bytes()
        result.peak_memory_kind = "process max RSS"
    pick = max if task.higher_is_better else min
    if result.diverged:
        result.final_val = float(task.worst)
        result.best_val = pick(result.val) if result.val else float(task.worst)
    else:
        result.final_val = result.val[-1]
        result.best_val = pick(result.val)
    return result
