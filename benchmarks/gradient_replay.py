"""Shared by the step-time benchmarks: replaying fixed gradients into every optimizer step."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def stepper(opt: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> Callable[[], None]:
    """A step function that gives back the gradients an optimizer cleared (heavyball sets
    ``p.grad = None`` in its step).

    A gradient the optimizer left in place is not replaced: gradkit's flat path turns every
    ``.grad`` into a view of one flat buffer, which backward passes then accumulate into (after
    ``optimizer.zero_grad()``); replacing it by a fresh tensor every step would charge that
    path a copy of every gradient that a training loop does not make.
    """
    grads = [p.grad for p in params]

    def step() -> None:
        for p, g in zip(params, grads):
            if p.grad is None:
                p.grad = g
        opt.step()

    return step
