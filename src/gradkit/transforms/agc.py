"""Adaptive gradient clipping (AGC): clip each unit's gradient relative to its weight norm."""

from __future__ import annotations

import torch

from gradkit.core.hyperparams import interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList
from gradkit.transforms._unitwise import unit_norm

__all__ = ["AdaptiveGradientClipping"]

_GRAD_NORM_FLOOR = 1e-6


class AdaptiveGradientClipping(GradientTransformation):
    """Unit-wise adaptive gradient clipping.

    For every output unit ``i`` (a row of a linear weight, a filter of a convolution, a whole
    vector for biases and gains), with ``||.||`` the unit-wise l2 norm::

        max_i = lambda * max(||W_i||, agc_eps)
        G_i  <- G_i * max_i / max(||G_i||, 1e-6)    if ||G_i|| > max_i,   else G_i

    Hyperparameters: ``agc_clipping_value`` (lambda, > 0, or None to disable) and ``agc_eps``
    (floor on the weight norm, so zero-initialised weights can move). The paper does not clip
    the final classifier layer: put it in a param group with ``agc_clipping_value=None``.

    Per-unit reductions: a loop over tensors, or on a flat buffer one segmented reduction per
    norm over all units at once (``ctx.segments``).

    Brock, De, Smith & Simonyan, "High-Performance Large-Scale Image Recognition Without
    Normalization", arXiv 2102.06171.
    """

    segments = "rows"
    hyperparameters = (
        interval("agc_clipping_value", 1e-2, 0.0, low_open=True, allow_none=True),
        interval("agc_eps", 1e-3, 0.0, low_open=True),
    )

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        clip = ctx.group["agc_clipping_value"]
        if clip is None:
            return updates
        eps = ctx.group["agc_eps"]
        if ctx.segments is not None:
            seg, p, g = ctx.segments, params[0], updates[0]
            max_norm = seg.row_sum(p * p).sqrt().clamp_min(eps).mul_(clip)
            g_norm = seg.row_sum(g * g).sqrt().clamp_min(_GRAD_NORM_FLOOR)
            factor = torch.where(g_norm > max_norm, max_norm / g_norm, 1.0)
            return ctx.owned([g * seg.expand_rows(factor)])
        out = ctx.writable(updates)  # scaled in place: no temporary per tensor
        for p, g in zip(params, out):
            max_norm = unit_norm(p.detach()).clamp_min(eps).mul_(clip)
            g_norm = unit_norm(g).clamp_min(_GRAD_NORM_FLOOR)
            g.mul_(torch.where(g_norm > max_norm, max_norm / g_norm, 1.0))
        return out
