"""Divide each tensor's update by its standard deviation (Ranger21's gradient normalization)."""

from __future__ import annotations

import torch

from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList

__all__ = ["NormalizeByStd"]

_EPS = 1e-8


class NormalizeByStd(GradientTransformation):
    """``u <- u / (std(u) + 1e-8)`` per tensor (unbiased std), for tensors of more than 2 entries.

    Smaller tensors pass through (their std is not informative). Used by Ranger21 after
    gradient centralization. Per-tensor std: a loop over tensors, or on a flat buffer two
    segmented reductions over all tensors at once (mean, then squared deviations).

    Wright & Demeure, "Ranger21: a synergistic deep learning optimizer", arXiv 2106.13731.
    """

    segments = "tensors"

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        if ctx.segments is not None:
            seg, u = ctx.segments, updates[0]
            n = seg.numel
            dev = u - seg.expand(seg.tensor_sum(u) / n.clamp_min(1.0))
            std = (seg.tensor_sum(dev * dev) / (n - 1.0).clamp_min(1.0)).sqrt()
            return ctx.owned([(u / seg.expand(torch.where(n > 2, std + _EPS, 1.0))).to(u.dtype)])
        out = ctx.writable(updates)  # scaled in place: no temporary per tensor
        for u in out:
            if u.numel() > 2:
                u.div_(u.std() + _EPS)
        return out
