"""Adam's bias-corrected moment ratio with an optional Nesterov look-ahead (AdamP's option)."""

from __future__ import annotations

import math

import torch

from gradkit.core.hyperparams import flag
from gradkit.core.transform import State, StepContext, TensorList
from gradkit.transforms.moments import (
    ScaleByAdam,
    _adam_denominator,
    _divide_into,
    _update_adam_moments,
)

__all__ = ["ScaleByAdamNesterov"]


class ScaleByAdamNesterov(ScaleByAdam):
    """``ScaleByAdam`` (without amsgrad) whose numerator may look ahead.

    ``nesterov=False``: ``(m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)``, exactly ScaleByAdam.
    ``nesterov=True``: numerator ``b1 m + (1-b1) g`` instead of ``m`` (after the moment
    updates), as in the AdamP authors' code (Heo et al., arXiv 2006.08217, ).
    Elementwise.
    """

    hyperparameters = (*ScaleByAdam.hyperparameters[:2], flag("nesterov", False))

    def init(self, params: TensorList) -> State:
        state = super().init(params)
        del state["max_exp_avg_sq"]
        return state

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        beta1, beta2 = ctx.group["betas"]
        m, v = _update_adam_moments(state, updates, beta1, beta2)
        denom = _adam_denominator(
            v, ctx.per_step(lambda t: math.sqrt(1 - beta2**t)), ctx.group["eps"]
        )
        if ctx.group["nesterov"]:
            out = torch._foreach_lerp(m, updates, 1 - beta1)
            torch._foreach_div_(out, denom)
        else:
            out = _divide_into(m, denom)
        torch._foreach_div_(out, ctx.per_step(lambda t: 1 - beta1**t))
        return ctx.owned(out)
