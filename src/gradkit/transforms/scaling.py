"""Scaling transforms: learning rate, constant factors, sign."""

from __future__ import annotations

import torch

from gradkit.core.hyperparams import interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList

__all__ = ["ScaleByLearningRate", "Scale", "Sign"]


class ScaleByLearningRate(GradientTransformation):
    """The descent step ``-lr * u``; ``lr`` is read from the group every step (schedulers work)."""

    def __init__(self, default: float = 1e-3, *, key: str = "lr") -> None:
        self.key = key
        self.hyperparameters = (interval(key, default, 0.0),)

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        lr = ctx.group[self.key]
        if isinstance(lr, torch.Tensor):
            lr = lr.item() if lr.device.type == "cpu" else lr
        return ctx.owned(torch._foreach_mul(updates, -lr))

    def __repr__(self) -> str:
        return f"ScaleByLearningRate(key={self.key!r})"


class Scale(GradientTransformation):
    """Multiply the updates by a constant ``factor``."""

    def __init__(self, factor: float) -> None:
        self.factor = float(factor)

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        return ctx.owned(torch._foreach_mul(updates, self.factor))

    def __repr__(self) -> str:
        return f"Scale({self.factor})"


class Sign(GradientTransformation):
    """Elementwise sign of the updates (signSGD; the last stage of Lion's direction)."""

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        return ctx.owned(torch._foreach_sign(updates))
