"""MARS's scaled stochastic recursive-momentum correction of the gradient."""

from __future__ import annotations

import torch

from gradkit.core.hyperparams import interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList

__all__ = ["MarsCorrection"]


class MarsCorrection(GradientTransformation):
    """``c = g + gamma * b1 / (1 - b1) * (g - g_prev)``, clipped to norm ``max_correction_norm``.

    The approximate MARS of the paper: ``g_prev`` is the previous step's stochastic gradient
    (one gradient evaluation per step). On a parameter's first step the correction is zero
    (``g_prev = g``, as ``x_1 = x_0`` in the paper's algorithm). Then, per tensor,
    ``c <- c * max_correction_norm / ||c||`` when ``||c|| > max_correction_norm`` (None
    disables). ``b1`` is ``betas[0]``, the momentum decay of the optimizer that follows.
    One buffer of state (the previous gradient). Per-tensor norms: on a flat buffer one
    segmented reduction over all tensors (``ctx.segments``).

    Yuan, Liu, Wu, Zhou & Gu, "MARS: Unleashing the Power of Variance Reduction for Training
    Large Models", arXiv 2411.10438.
    """

    segments = "tensors"
    hyperparameters = (
        interval("gamma", 0.025, 0.0),
        interval("max_correction_norm", 1.0, 0.0, low_open=True, allow_none=True),
    )

    def init(self, params: TensorList) -> State:
        return {"prev_grad": [torch.empty(0, dtype=p.dtype, device=p.device) for p in params]}

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        beta1 = ctx.group["betas"][0]
        scale = ctx.group["gamma"] * beta1 / (1.0 - beta1)
        prev = state["prev_grad"]
        for buf, u in zip(prev, updates):
            if buf.numel() == 0 and u.numel() > 0:  # first step: no correction
                buf.resize_as_(u).copy_(u)
        out = torch._foreach_sub(updates, prev)
        torch._foreach_mul_(out, scale)
        torch._foreach_add_(out, updates)
        torch._foreach_copy_(prev, updates)
        max_norm = ctx.group["max_correction_norm"]
        if max_norm is not None and ctx.segments is not None:
            seg = ctx.segments
            factors = torch.clamp(max_norm / seg.tensor_norm(out[0]), max=1.0)
            out[0].mul_(seg.expand(factors))
        elif max_norm is not None:
            norms = torch._foreach_norm(out)
            factors = [torch.clamp(max_norm / n, max=1.0) for n in norms]
            torch._foreach_mul_(out, factors)
        return ctx.owned(out)
