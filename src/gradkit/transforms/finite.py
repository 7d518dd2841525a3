"""Refuse or skip steps whose updates hold NaN or infinity, at any point of a chain."""

from __future__ import annotations

from gradkit.core.hyperparams import choice
from gradkit.core.optimizer import NonFiniteGradientError, gradients_are_finite, nonfinite_error
from gradkit.core.transform import GradientTransformation, SkipStep, State, StepContext, TensorList

__all__ = ["RejectNonFinite", "NonFiniteGradientError"]

_POLICY = choice("policy", "raise", ("raise", "skip"))


class RejectNonFinite(GradientTransformation):
    """Check that every update is finite; ``policy="raise"`` raises, ``"skip"`` skips the step.

    Every named optimizer already takes ``nonfinite="raise" | "skip" | "ignore"`` (checked on
    the gradients before the chain); this transform puts the same check anywhere in a chain of
    your own, e.g. after a transform that may overflow. A skipped step leaves parameters and
    state untouched (the step counter too), like the ``GradScaler`` of mixed-precision training.
    It synchronizes with the device once per step (one boolean read back).
    """

    def __init__(self, policy: str = "raise") -> None:
        _POLICY.validate(policy)
        self.policy = policy

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        if gradients_are_finite(updates):
            return updates
        if self.policy == "skip":
            raise SkipStep
        raise nonfinite_error(updates)

    def __repr__(self) -> str:
        return f"RejectNonFinite(policy={self.policy!r})"
