"""diffGrad: Adam's moment ratio damped by a friction coefficient on the gradient change."""

from __future__ import annotations

import math

import torch

from gradkit.core.hyperparams import betas, interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList

__all__ = ["ScaleByDiffGrad"]


class ScaleByDiffGrad(GradientTransformation):
    """diffGrad's direction: Adam's bias-corrected ratio times ``sigmoid(|g_prev - g|)``.

    ``m <- b1 m + (1-b1) g``; ``v <- b2 v + (1-b2) g^2``; ``xi = sigmoid(|g_prev - g|)``
    (``g_prev = 0`` on the first step); output ``xi * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)``;
    then ``g_prev <- g``. Purely elementwise.

    Dubey et al., "diffGrad: An Optimization Method for Convolutional Neural Networks",
    arXiv 1909.11015 (seed P014).
    """

    hyperparameters = (betas("betas", (0.9, 0.999)), interval("eps", 1e-8, 0.0))

    def init(self, params: TensorList) -> State:
        def zeros() -> TensorList:
            return [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]

        return {"exp_avg": zeros(), "exp_avg_sq": zeros(), "previous_grad": zeros()}

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        beta1, beta2 = ctx.group["betas"]
        m, v, prev = state["exp_avg"], state["exp_avg_sq"], state["previous_grad"]
        torch._foreach_lerp_(m, updates, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, updates, updates, 1 - beta2)
        # friction xi = sigmoid(|g_prev - g|), computed in a fresh buffer
        xi = torch._foreach_sub(prev, updates)
        torch._foreach_abs_(xi)
        torch._foreach_sigmoid_(xi)
        torch._foreach_copy_(prev, updates)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, [math.sqrt(1 - beta2**t) for t in ctx.steps])
        torch._foreach_add_(denom, ctx.group["eps"])
        torch._foreach_mul_(xi, m)
        torch._foreach_div_(xi, denom)
        torch._foreach_div_(xi, [1 - beta1**t for t in ctx.steps])
        return ctx.owned(xi)
