"""diffGrad: Adam's moment ratio damped by a friction coefficient on the gradient change."""

from __future__ import annotations

import math

import torch

from gradkit.core.elementwise_math import sigmoid_
from gradkit.core.hyperparams import betas, interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList
from gradkit.transforms.moments import _adam_denominator, _adam_moment_buffers, _update_adam_moments

__all__ = ["ScaleByDiffGrad"]


class ScaleByDiffGrad(GradientTransformation):
    """diffGrad's direction: Adam's bias-corrected ratio times ``sigmoid(|g_prev - g|)``.

    ``m <- b1 m + (1-b1) g``; ``v <- b2 v + (1-b2) g^2``; ``xi = sigmoid(|g_prev - g|)``
    (``g_prev = 0`` on the first step); output ``xi * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)``;
    then ``g_prev <- g``. Purely elementwise.

    Dubey et al., "diffGrad: An Optimization Method for Convolutional Neural Networks",
    arXiv 1909.11015.
    """

    hyperparameters = (betas("betas", (0.9, 0.999)), interval("eps", 1e-8, 0.0, low_open=True))

    def init(self, params: TensorList) -> State:
        return {
            **_adam_moment_buffers(params),
            "previous_grad": [
                torch.zeros_like(p, memory_format=torch.preserve_format) for p in params
            ],
        }

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        num, denom, bc1 = self.update_as_ratio(updates, state, params, ctx)
        torch._foreach_div_(num, denom)
        torch._foreach_div_(num, bc1)
        return ctx.owned(num)

    def update_as_ratio(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> tuple[TensorList, TensorList, float | list[float]]:
        """``(xi * m, sqrt(v) / sqrt(1 - b2^t) + eps, 1 - b1^t)``: the direction is
        ``num / den / divisor`` (the core fuses it with the learning rate into one pass)."""
        beta1, beta2 = ctx.group["betas"]
        m, v = _update_adam_moments(state, updates, beta1, beta2)
        prev = state["previous_grad"]
        # friction xi = sigmoid(|g_prev - g|), computed in a fresh buffer
        xi = torch._foreach_sub(prev, updates)
        torch._foreach_abs_(xi)
        sigmoid_(xi)
        torch._foreach_copy_(prev, updates)
        denom = _adam_denominator(
            v, ctx.per_step(lambda t: math.sqrt(1 - beta2**t)), ctx.group["eps"]
        )
        torch._foreach_mul_(xi, m)
        return xi, denom, ctx.per_step(lambda t: 1 - beta1**t)
