"""Divide each tensor's update by its standard deviation (Ranger21's gradient normalization)."""

from __future__ import annotations

import torch

from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList

__all__ = ["NormalizeByStd"]

_EPS = 1e-8


class NormalizeByStd(GradientTransformation):
    """``u <- u / (std(u) + 1e-8)`` per tensor (unbiased std), for tensors of more than 2 entries.

    Smaller tensors pass through (their std is not informative). Used by Ranger21 after
    gradient centralization. Per-tensor reduction, so ``flat_ok`` is False.

    Wright & Demeure, "Ranger21: a synergistic deep learning optimizer", arXiv 2106.13731.
    """

    flat_ok = False

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        out = [u / (u.std() + _EPS) if u.numel() > 2 else torch.clone(u) for u in updates]
        return ctx.owned(out)
