"""AdaMomentum: Adam whose second moment tracks the momentum instead of the gradient."""

from __future__ import annotations

import math

import torch

from gradkit.core.hyperparams import betas, interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList
from gradkit.transforms.moments import _adam_moment_buffers, _divide_into, _update_adam_moments

__all__ = ["ScaleByAdaMomentum"]


class ScaleByAdaMomentum(GradientTransformation):
    """AdaMomentum's direction (the paper's algorithm box).

    ``m <- b1 m + (1-b1) g``; ``v <- b2 v + (1-b2) m^2 + eps`` (eps inside the average, as in
    the paper); output ``(m / (1-b1^t)) / sqrt(v / (1-b2^t))``. Purely elementwise.

    Wang et al., "Rethinking Adam: A Twofold Exponential Moving Average Approach",
    arXiv 2106.11514.
    """

    hyperparameters = (betas("betas", (0.9, 0.999)), interval("eps", 1e-8, 0.0, low_open=True))

    def init(self, params: TensorList) -> State:
        return _adam_moment_buffers(params)

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        beta1, beta2 = ctx.group["betas"]
        m, v = _update_adam_moments(state, updates, beta1, beta2, of_momentum=True)
        torch._foreach_add_(v, ctx.group["eps"])
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, ctx.per_step(lambda t: math.sqrt(1 - beta2**t)))
        out = _divide_into(m, denom)
        torch._foreach_div_(out, ctx.per_step(lambda t: 1 - beta1**t))
        return ctx.owned(out)
