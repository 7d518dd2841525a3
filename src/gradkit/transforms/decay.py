"""Weight decay: ``u + wd * p``, coupled (L2, before the moments) or decoupled (after them)."""

from __future__ import annotations

import torch

from gradkit.core.hyperparams import interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList

__all__ = [
    "AddDecayedWeights",
    "DecoupledWeightDecay",
    "decoupled_weight_decay",
    "l2_regularization",
]


class AddDecayedWeights(GradientTransformation):
    """Add ``wd * p`` to the updates, with ``wd = group[key]``.

    Placed before an adaptive transform it is coupled L2 regularization (the gradient of
    ``wd/2 * ||p||^2``); placed after it and before learning-rate scaling it is decoupled weight
    decay, ``p <- p - lr * (u + wd * p)`` (Loshchilov & Hutter, "Decoupled Weight Decay
    Regularization", arXiv 1711.05101).
    """

    def __init__(self, default: float = 0.0, *, key: str = "weight_decay") -> None:
        self.key = key
        self.hyperparameters = (interval(key, default, 0.0),)

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        wd = ctx.group[self.key]
        if wd == 0:
            return updates
        return ctx.owned(torch._foreach_add(updates, params, alpha=wd))

    def __repr__(self) -> str:
        return f"AddDecayedWeights(key={self.key!r})"


class DecoupledWeightDecay(GradientTransformation):
    """Decoupled weight decay applied to the parameters: ``p <- (1 - lr * wd) * p``.

    The same rule as ``p <- p - lr * (u + wd * p)`` written the way torch.optim.AdamW and most
    libraries apply it (shrink first, then step), so trajectories agree with theirs to rounding.
    It changes the parameters in place and passes the updates through; transforms after it see
    the shrunk parameters. Loshchilov & Hutter, "Decoupled Weight Decay Regularization",
    arXiv 1711.05101.
    """

    passes_updates_through = True

    def __init__(
        self, default: float = 0.0, *, key: str = "weight_decay", lr_key: str = "lr"
    ) -> None:
        self.key = key
        self.lr_key = lr_key
        self.hyperparameters = (interval(key, default, 0.0),)

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        wd = ctx.group[self.key]
        if wd != 0:
            lr = ctx.group[self.lr_key]
            lr = lr.item() if isinstance(lr, torch.Tensor) else lr
            torch._foreach_mul_(params, ctx.loop_scalar(1.0 - lr * wd))
        return updates

    def __repr__(self) -> str:
        return f"DecoupledWeightDecay(key={self.key!r})"


def decoupled_weight_decay(
    default: float = 0.0, *, key: str = "weight_decay"
) -> DecoupledWeightDecay:
    """Decoupled weight decay (AdamW): ``p <- (1 - lr * wd) * p`` each step."""
    return DecoupledWeightDecay(default, key=key)


def l2_regularization(default: float = 0.0, *, key: str = "weight_decay") -> AddDecayedWeights:
    """Coupled L2 regularization: put it first, so the moments see ``g + wd * p``."""
    return AddDecayedWeights(default, key=key)
