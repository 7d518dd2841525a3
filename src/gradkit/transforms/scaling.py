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

    def _lr(self, ctx: StepContext) -> float | torch.Tensor:
        lr = ctx.group[self.key]
        if isinstance(lr, torch.Tensor):
            lr = lr.item() if lr.device.type == "cpu" else lr
        return lr

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        lr = self._lr(ctx)
        scale = -lr if isinstance(lr, torch.Tensor) else ctx.loop_scalar(-lr)
        return ctx.owned(torch._foreach_mul(updates, scale))

    def apply_step(
        self, params: TensorList, updates: TensorList, state: State, ctx: StepContext
    ) -> None:
        """``p -= lr * u`` in one pass (the chain's fused tail)."""
        lr = self._lr(ctx)
        if isinstance(lr, torch.Tensor):  # a device tensor lr: no scalar alpha
            torch._foreach_add_(params, torch._foreach_mul(updates, -lr))
        else:
            torch._foreach_add_(params, updates, alpha=ctx.loop_scalar(-lr))

    def apply_ratio(
        self,
        params: TensorList,
        num: TensorList,
        den: TensorList,
        divisor: float | list[float],
        ctx: StepContext,
    ) -> None:
        """``p -= (lr / divisor) * num / den`` in one ``addcdiv_`` pass (as torch.optim's Adam
        forms ``step_size = lr / bias_correction1``)."""
        lr = self._lr(ctx)
        if isinstance(lr, torch.Tensor):
            step = torch._foreach_div(num, den)
            torch._foreach_div_(step, divisor)
            torch._foreach_add_(params, torch._foreach_mul(step, -lr))
        elif isinstance(divisor, list):
            torch._foreach_addcdiv_(params, num, den, [-(lr / d) for d in divisor])
        else:
            torch._foreach_addcdiv_(params, num, den, ctx.loop_scalar(-(lr / divisor)))

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
