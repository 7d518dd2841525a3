"""Norm loss: pull the norm of every output unit of the weights towards 1."""

from __future__ import annotations

import torch

from gradkit.core.hyperparams import interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList
from gradkit.transforms._unitwise import unit_norm

__all__ = ["NormLoss"]


class NormLoss(GradientTransformation):
    """Decoupled gradient step on the norm loss ``f * sum_i (||W_i|| - 1)^2``.

    For every output unit ``i`` (a row, a filter; a whole vector for 1-D tensors)::

        W_i <- W_i * (1 - lr * 2 f (1 - 1 / (||W_i|| + eps)))

    applied to the parameters in place (like decoupled weight decay: it does not enter the
    adaptive moments); updates pass through. Hyperparameters: ``norm_loss_factor`` (f >= 0)
    and ``eps``. Per-unit norms: a loop over tensors, or on a flat buffer one segmented
    reduction over all units at once (``ctx.segments``).

    Georgiou, Schmitt, Bäck & Rosenhahn, "Norm Loss: An efficient yet effective regularization
    method for deep neural networks", arXiv 2103.06583; a part of Ranger21, arXiv
    2106.13731.
    """

    segments = "rows"
    hyperparameters = (
        interval("norm_loss_factor", 1e-4, 0.0),
        interval("eps", 1e-8, 0.0, low_open=True),
    )

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        factor = ctx.group["norm_loss_factor"]
        if factor == 0:
            return updates
        lr = ctx.group["lr"]
        lr = lr.item() if isinstance(lr, torch.Tensor) else lr
        eps = ctx.group["eps"]
        if ctx.segments is not None:
            seg, p = ctx.segments, params[0]
            norm = seg.row_sum(p * p).sqrt()
            correction = (1.0 - 1.0 / (norm + eps)).mul_(2.0 * factor * lr)
            p.mul_(seg.expand_rows(1.0 - correction))
            return updates
        for p in params:
            correction = (1.0 - 1.0 / (unit_norm(p) + eps)).mul_(2.0 * factor * lr)
            p.mul_(1.0 - correction)
        return updates
