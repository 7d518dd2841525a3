"""Refuse or skip steps whose gradients hold NaN or infinity."""

from __future__ import annotations

import torch

from gradkit.core.hyperparams import choice
from gradkit.core.transform import GradientTransformation, SkipStep, State, StepContext, TensorList

__all__ = ["RejectNonFinite", "NonFiniteGradientError"]


class NonFiniteGradientError(FloatingPointError):
    """A gradient holds NaN or infinity and the optimizer was told to refuse it."""


class RejectNonFinite(GradientTransformation):
    """Check that every update is finite; ``nonfinite="raise"`` raises, ``"skip"`` skips the step.

    A skipped step leaves parameters and state untouched (the step counter too), like the
    ``GradScaler`` of mixed-precision training. Put it first in a chain. It synchronizes with the
    device once per step (one boolean read back).
    """

    hyperparameters = (choice("nonfinite", "raise", ("raise", "skip", "ignore")),)

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        mode = ctx.group["nonfinite"]
        if mode == "ignore":
            return updates
        # sum of norms is non-finite iff some element is
        total = torch.stack([n.float() for n in torch._foreach_norm(updates, float("inf"))]).sum()
        if bool(torch.isfinite(total)):
            return updates
        if mode == "skip":
            raise SkipStep
        bad = [i for i, u in enumerate(updates) if not bool(torch.isfinite(u).all())]
        shapes = ", ".join(str(tuple(updates[i].shape)) for i in bad[:5])
        raise NonFiniteGradientError(
            f"non-finite gradient (NaN or inf) in {len(bad)} parameter(s) of shapes {shapes}; "
            "pass nonfinite='skip' to skip such steps, or find the overflow (lower the lr, use "
            "gradient clipping or a loss scaler)"
        )
