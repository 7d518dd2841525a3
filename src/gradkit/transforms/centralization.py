"""Gradient centralization: remove the mean of each output unit's gradient."""

from __future__ import annotations

import torch

from gradkit.core.hyperparams import flag
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList

__all__ = ["GradientCentralization"]


class GradientCentralization(GradientTransformation):
    """``G_i <- G_i - mean(G_i)`` for every output unit ``i`` of a weight with ``ndim >= 2``.

    The mean runs over every dimension but the first (the fan-in of a row or a filter); vectors
    (biases, norm gains) pass through. With ``gc_conv_only=True`` only tensors with ``ndim > 3``
    (convolution filters) are centralized. Equivalent to projecting the gradient onto the
    hyperplane of zero-mean units, so each unit's weight mean stays where it started.

    Per-unit means: a loop over tensors, or on a flat buffer one segmented reduction over all
    units at once (``ctx.segments``).

    Yong, Huang, Hua & Zhang, "Gradient Centralization: A New Optimization Technique for Deep
    Neural Networks", arXiv 2004.01461; one of the parts of Ranger21, arXiv 2106.13731.
    """

    segments = "rows"
    hyperparameters = (flag("gc_conv_only", False),)

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        min_ndim = 4 if ctx.group["gc_conv_only"] else 2
        if ctx.segments is not None:
            seg, u = ctx.segments, updates[0]
            mean = seg.row_sum(u) / seg.to_rows(seg.row_size)
            centred = seg.to_rows(seg.ndim >= min_ndim)
            centring = seg.expand_rows(torch.where(centred, mean, 0.0))
            return ctx.owned([(u - centring).to(u.dtype)])
        if not any(u.ndim >= min_ndim for u in updates):
            return updates
        out = ctx.writable(updates)  # centred in place: no temporary per tensor
        for u in out:
            if u.ndim >= min_ndim:
                u.sub_(u.mean(dim=tuple(range(1, u.ndim)), keepdim=True))
        return out
