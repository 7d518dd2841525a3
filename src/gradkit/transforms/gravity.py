"""Gravity's kinematic velocity update."""

from __future__ import annotations

import torch

from gradkit.core.hyperparams import interval
from gradkit.core.max_abs import max_abs
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList

__all__ = ["ScaleByGravity"]


class ScaleByGravity(GradientTransformation):
    """Gravity's velocity, output before learning-rate scaling.

    Per tensor, with ``M = max|g|``::

        zeta = g / (1 + (g * M)^2)
        b_t  = (beta * t + 1) / (t + 2)
        V   <- b_t V + (1 - b_t) zeta

    and the optimizer steps ``p <- p - lr * V``. ``V`` starts as a draw from
    ``N(0, (alpha / lr)^2)`` (torch's global generator, on the parameter's first step).
    Hyperparameters ``alpha`` in (0, 1] and ``beta`` in [0, 1]; reads ``lr`` for the
    initialisation. Per-tensor maximum: a loop over tensors, or on a flat buffer one segmented
    reduction (``ctx.segments``); the initial draw is made tensor by tensor on either path, so
    both draw the same numbers.

    Bahrami & Zadeh, "Gravity Optimizer: a Kinematic Approach on Optimization in Deep
    Learning", arXiv 2101.09192.
    """

    segments = "tensors"
    hyperparameters = (
        interval("alpha", 0.01, 0.0, 1.0, low_open=True),
        interval("beta", 0.9, 0.0, 1.0),
    )

    def init(self, params: TensorList) -> State:
        return {"velocity": [torch.empty(0, dtype=p.dtype, device=p.device) for p in params]}

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        group = ctx.group
        vel = state["velocity"]
        lr = group["lr"]
        lr = lr.item() if isinstance(lr, torch.Tensor) else lr
        weight = ctx.per_step(lambda t: (group["beta"] * t + 1.0) / (t + 2.0))
        if ctx.segments is not None:
            seg, buf, u = ctx.segments, vel[0], updates[0]
            if buf.numel() == 0 and u.numel() > 0:
                buf.resize_as_(u)
                for view in seg.views(buf):  # tensor by tensor: the per-tensor path's draws
                    view.normal_(mean=0.0, std=group["alpha"] / lr)
            scaled = u * seg.expand(seg.tensor_abs_max(u))
            buf.lerp_(u / (scaled * scaled + 1.0), 1.0 - weight)
            return [buf]
        for buf, u in zip(vel, updates):
            if buf.numel() == 0 and u.numel() > 0:
                buf.resize_as_(u).normal_(mean=0.0, std=group["alpha"] / lr)
        maxes = max_abs(updates)
        scaled = [u * m for u, m in zip(updates, maxes)]
        torch._foreach_mul_(scaled, scaled)
        torch._foreach_add_(scaled, 1.0)
        zeta = torch._foreach_div(updates, scaled)
        if isinstance(weight, list):  # parameters on different steps (rare)
            for v, z, w in zip(vel, zeta, weight):
                v.lerp_(z, 1.0 - w)
        else:
            torch._foreach_lerp_(vel, zeta, 1.0 - weight)
        return vel
