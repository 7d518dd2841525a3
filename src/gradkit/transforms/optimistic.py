"""Optimistic (past-gradient corrected) updates for min-max problems."""

from __future__ import annotations

import torch

from gradkit.core.hyperparams import interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList

__all__ = ["ScaleByOptimisticGradient"]


class ScaleByOptimisticGradient(GradientTransformation):
    """``u_t = (alpha + beta) g_t - beta g_{t-1}``; on the first step ``g_0 = g_1`` (so ``u = alpha g``).

    With ``alpha = beta = 1`` and a learning rate this is optimistic gradient descent,
    ``x_{t+1} = x_t - lr (2 g_t - g_{t-1})``, the single-call surrogate of extra-gradient (Popov's
    past extra-gradient in its unconstrained form). Hyperparameters ``og_alpha`` and ``og_beta``.
    One buffer per parameter (the previous gradient), allocated on first use.

    Hsieh, Iutzeler, Malick, Mertikopoulos, "On the convergence of single-call stochastic
    extra-gradient methods", arXiv 1908.08465.
    """

    hyperparameters = (interval("og_alpha", 1.0, 0.0), interval("og_beta", 1.0, 0.0))

    def init(self, params: TensorList) -> State:
        return {"prev_grad": [torch.empty(0, dtype=p.dtype, device=p.device) for p in params]}

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        alpha, beta = ctx.group["og_alpha"], ctx.group["og_beta"]
        prev = state["prev_grad"]
        for buf, u in zip(prev, updates):
            if buf.numel() == 0 and u.numel() > 0:  # first use: g_{t-1} <- g_t
                buf.resize_as_(u).copy_(u)
        out = torch._foreach_mul(updates, alpha + beta)
        torch._foreach_add_(out, prev, alpha=-beta)
        torch._foreach_copy_(prev, updates)
        return ctx.owned(out)
