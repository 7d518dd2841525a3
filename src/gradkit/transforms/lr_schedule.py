"""Run transforms under a learning rate scheduled inside the chain (Ranger21's warmup/warmdown)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch

from gradkit.core.hyperparams import Hyperparameter, flag, interval
from gradkit.core.transform import Chain, GradientTransformation, State, StepContext, TensorList
from gradkit.transforms._unitwise import positive_int

__all__ = ["WithScheduledLR", "LinearWarmupWarmdown"]


class LinearWarmupWarmdown:
    """Ranger21's schedule: linear warmup, then constant, then linear warmdown to a floor.

    With base rate ``lr`` (the group's), step ``t`` (1-based), ``W`` warmup and ``D`` warmdown
    iterations, ``N = num_iterations``::

        lr_t = lr * min(1, t / W)                                  t <= W
        lr_t = lr                                                  W < t < N - D
        lr_t = max(lr - (lr - min_lr) * min(1, (t + 1 - (N - D)) / (D + 1)), min_lr)   t >= N - D

    ``W`` defaults to ``ceil(2 / (1 - b2))`` (the untuned warmup of Ma & Yarats, arXiv
    1910.04209), or ``0.22 N`` when that exceeds ``0.45 N``; ``D`` defaults to
    ``N - int(0.72 N)``, and to no warmdown when ``num_iterations`` is None.
    ``disable_lr_scheduler=True`` keeps ``lr`` constant.

    Wright & Demeure, "Ranger21: a synergistic deep learning optimizer", arXiv 2106.13731.
    """

    hyperparameters = (
        positive_int("num_iterations", None, allow_none=True),
        positive_int("num_warm_up_iterations", None, low=0, allow_none=True),
        positive_int("num_warm_down_iterations", None, low=0, allow_none=True),
        interval("warm_down_min_lr", 3e-5, 0.0),
        flag("disable_lr_scheduler", False),
    )

    def warmup_iterations(self, group: Mapping[str, Any]) -> int:
        if group["num_warm_up_iterations"] is not None:
            return group["num_warm_up_iterations"]
        auto = math.ceil(2.0 / (1.0 - group["betas"][1]))
        total = group["num_iterations"]
        if total is not None and auto / total > 0.45:
            return int(0.22 * total)
        return auto

    def warmdown_iterations(self, group: Mapping[str, Any]) -> int:
        total = group["num_iterations"]
        if group["num_warm_down_iterations"] is not None:
            return group["num_warm_down_iterations"]
        return 0 if total is None else total - int(0.72 * total)

    def __call__(self, group: Mapping[str, Any], step: int) -> float:
        lr = group["lr"]
        lr = lr.item() if isinstance(lr, torch.Tensor) else float(lr)
        if group["disable_lr_scheduler"]:
            return lr
        base = lr
        warm = self.warmup_iterations(group)
        if warm > 0 and step <= warm:
            lr = base * min(1.0, step / warm)
        down = self.warmdown_iterations(group)
        total = group["num_iterations"]
        if down > 0 and total is not None:
            start = total - down
            if step >= start:
                frac = min(max(step + 1 - start, 1) / (down + 1), 1.0)
                lr = max(
                    base - (base - group["warm_down_min_lr"]) * frac, group["warm_down_min_lr"]
                )
        return lr


class WithScheduledLR(GradientTransformation):
    """Run ``inner`` with ``group["lr"]`` replaced by ``schedule(group, step)``.

    Every transform of ``inner`` that reads ``lr`` (learning-rate scaling, decoupled weight
    decay, norm loss) sees the scheduled value; the param group itself is not changed, so an
    outer ``torch.optim.lr_scheduler`` still scales the base rate. The schedule object provides
    ``hyperparameters`` and ``__call__(group, step) -> lr``.
    """

    #: the schedule is Python arithmetic on the step and the lr (``float(lr)``, ``min``), which
    #: a compiled step specializes on: one recompile per new lr during warm-up and warm-down
    compile_ok = False

    def __init__(self, inner: GradientTransformation, schedule: Any) -> None:
        self.inner = inner if isinstance(inner, Chain) else Chain(inner)
        self.schedule = schedule

    @property
    def flat_ok(self) -> bool:  # type: ignore[override]
        return self.inner.flat_ok

    @property
    def needs_closure(self) -> bool:  # type: ignore[override]
        return self.inner.needs_closure

    @property
    def segments(self) -> str | None:  # type: ignore[override]
        return self.inner.segments

    @property
    def per_tensor_state(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.inner.per_tensor_state

    def specs(self) -> dict[str, Hyperparameter]:
        out = dict(self.inner.specs())
        out.update({h.name: h for h in self.schedule.hyperparameters})
        return out

    def init(self, params: TensorList) -> State:
        return self.inner.init(params)

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        group = dict(ctx.group)
        group["lr"] = self.schedule(ctx.group, ctx.step)
        return self.inner.update(updates, state, params, dataclasses.replace(ctx, group=group))

    def __repr__(self) -> str:
        return f"WithScheduledLR({self.inner!r}, {type(self.schedule).__name__})"
