"""Exponential-moving-average momentum with optional Nesterov look-ahead (Muon's form)."""

from __future__ import annotations

import torch

from gradkit.core.hyperparams import flag, interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList

__all__ = ["EMAMomentum"]


class EMAMomentum(GradientTransformation):
    """``m <- mu m + (1 - mu) u`` (``m_0 = 0``); output ``m``, or ``(1 - mu) u + mu m`` with
    ``nesterov=True``.

    The form used by Muon's reference implementation and by pytorch-optimizer's Muon and AdaGO.
    It differs from torch.optim.SGD's ``b <- mu b + u`` only by the factor ``1 - mu``, which an
    orthogonalization or normalization removes. Hyperparameters: ``momentum`` (mu, in [0, 1)) and
    ``nesterov``.
    """

    hyperparameters = (
        interval("momentum", 0.95, 0.0, 1.0, high_open=True),
        flag("nesterov", True),
    )

    def init(self, params: TensorList) -> State:
        return {"momentum_buffer": [torch.zeros_like(p) for p in params]}

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        mu = ctx.group["momentum"]
        bufs = state["momentum_buffer"]
        torch._foreach_lerp_(bufs, updates, 1.0 - mu)
        if ctx.group["nesterov"]:
            out = torch._foreach_mul(updates, 1.0 - mu)
            torch._foreach_add_(out, bufs, alpha=mu)
            return ctx.owned(out)
        return bufs  # not owned: later transforms copy before changing it
