"""Shared by the step-time benchmarks: replaying fixed gradients into every optimizer step."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def stepper(opt: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> Callable[[], None]:
    """A step function that restores the gradients first (heavyball clears ``p.grad``)."""
    grads = [p.grad for p in params]

    def step() -> None:
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()

    return step
