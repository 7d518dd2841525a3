"""The sign of an exponential moving average of the updates (MARS-Lion's direction)."""

from __future__ import annotations

import torch

from gradkit.core.hyperparams import betas
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList

__all__ = ["SignOfMomentum"]


class SignOfMomentum(GradientTransformation):
    """``m <- b1 m + (1 - b1) u`` (``m_0 = 0``), output ``sign(m)``; ``b1 = betas[0]``.

    The update of MARS-Lion (Yuan et al., arXiv 2411.10438, ); unlike Lion it uses one
    decay for the momentum and the direction. One buffer of state.
    """

    hyperparameters = (betas("betas", (0.95, 0.99)),)

    def init(self, params: TensorList) -> State:
        return {"exp_avg": [torch.zeros_like(p) for p in params]}

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        m = state["exp_avg"]
        torch._foreach_lerp_(m, updates, 1.0 - ctx.group["betas"][0])
        return ctx.owned(torch._foreach_sign(m))
