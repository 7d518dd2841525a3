"""Stable weight decay: decoupled decay divided by the root of the mean second moment."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from gradkit.core.hyperparams import interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList

__all__ = ["StableWeightDecay", "SecondMomentSource"]


class SecondMomentSource(Protocol):
    def mean_second_moment(self, ctx: StepContext) -> Tensor: ...


class StableWeightDecay(GradientTransformation):
    """``p <- (1 - lr * wd / sqrt(mean(v_hat))) * p``, applied to the parameters in place.

    ``mean(v_hat)`` is the mean over all entries of the param group of the bias-corrected
    second moment of an adaptive transform earlier in the chain (``source``, e.g.
    :class:`~gradkit.transforms.pnm.ScaleByAdaPNM`), read at this step (``source`` leaves it in
    ``ctx.shared``). Dividing by it keeps the
    effective decay comparable to the adaptive step size. Updates pass through unchanged. While
    ``mean(v_hat)`` is 0 (every gradient so far zero) there is no decay: the factor would be
    infinite (pytorch-optimizer's Ranger21 divides by zero there).

    Xie, Sato & Sugiyama, "Understanding and Scheduling Weight Decay" (stable weight decay),
    arXiv 2011.11152; used by Ranger21, arXiv 2106.13731.
    """

    def __init__(self, source: SecondMomentSource, *, key: str = "weight_decay") -> None:
        self.source = source
        self.key = key
        self.hyperparameters = (interval(key, 1e-4, 0.0),)

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        wd = ctx.group[self.key]
        if wd == 0:
            return updates
        lr = ctx.group["lr"]
        lr = lr.item() if isinstance(lr, torch.Tensor) else lr
        mean_v = self.source.mean_second_moment(ctx)
        # mean(v_hat) == 0 (only zero gradients so far) leaves the decay undefined: no decay
        # then, instead of an infinite factor (the references divide by zero there)
        factor = torch.where(mean_v > 0, 1.0 - (lr * wd) / mean_v.sqrt(), torch.ones_like(mean_v))
        torch._foreach_mul_(params, factor.to(device=params[0].device, dtype=params[0].dtype))
        return updates

    def __repr__(self) -> str:
        return f"StableWeightDecay(key={self.key!r})"
