"""Extra-gradient and optimistic gradient descent for min-max problems (variational inequalities)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gradkit.core.transform import GradientTransformation, chain
from gradkit.optim._base import RecipeOptimizer
from gradkit.optim._wrapper import closure_error
from gradkit.optim.registry import register_optimizer
from gradkit.transforms.optimistic import ScaleByOptimisticGradient
from gradkit.transforms.scaling import ScaleByLearningRate

__all__ = ["ExtraGradient", "OptimisticGD"]

_PAPER = "On the convergence of single-call stochastic extra-gradient methods"


@register_optimizer("extragradient", paper=_PAPER, arxiv="1908.08465")
class ExtraGradient(RecipeOptimizer):
    """Extra-gradient (Korpelevich): step with the field at an extrapolated point.

    For the field ``V`` (the gradient, negated in param groups with ``maximize=True``, so a
    min-max game puts the max player's parameters in a ``maximize`` group)::

        x_half = x_t - lr * V(x_t)        # extrapolation (closure at x_t)
        x_next = x_t - lr * V(x_half)     # update (closure at x_half)

    Two closure calls per step; all groups are extrapolated together before the second call.
    The closure's loss at ``x_t`` is returned. Paper: Hsieh, Iutzeler, Malick, Mertikopoulos, "On
    the convergence of single-call stochastic extra-gradient methods", NeurIPS 2019, arXiv
    1908.08465, which states EG as above with one step size. Default ``lr = 0.01``
    (the paper fixes none; it must be below ``1/L`` for an ``L``-Lipschitz field).

    Example (``min_x max_y f(x, y)``)::

        opt = ExtraGradient([{"params": [x]}, {"params": [y], "maximize": True}], lr=0.1)

        def closure():
            opt.zero_grad()
            loss = f(x, y)
            loss.backward()
            return loss

        opt.step(closure)
    """

    hyperparameters = {"lr": 0.01}
    requires_closure = True

    def recipe(self) -> GradientTransformation:
        return chain(ScaleByLearningRate())

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Extrapolate every group with the field at ``x_t``, re-evaluate, step from ``x_t``."""
        if closure is None:
            raise closure_error(
                "ExtraGradient", "it evaluates the field at x_t and at the extrapolated point."
            )
        with torch.enable_grad():
            loss = closure()
        params, moves = [], []
        for group in self.param_groups:
            scale = group["lr"] if group["maximize"] else -group["lr"]
            for p in group["params"]:
                if p.grad is not None:
                    params.append(p)
                    moves.append(p.grad.mul(scale))
        saved = [p.clone() for p in params]
        if params:
            torch._foreach_add_(params, moves)
        del moves
        with torch.enable_grad():
            closure()
        if params:
            torch._foreach_copy_(params, saved)
        self._step_groups(closure, loss)
        return loss


@register_optimizer("optimistic_gd", paper=_PAPER, arxiv="1908.08465", aliases=("ogd",))
class OptimisticGD(RecipeOptimizer):
    """Optimistic gradient descent: ``x_{t+1} = x_t - lr ((alpha + beta) V_t - beta V_{t-1})``.

    ``V`` is the gradient (negated in ``maximize`` groups). With ``og_alpha = og_beta = 1`` (the
    defaults) it is the optimistic / past extra-gradient method of the paper (Popov), which needs
    one gradient per step and no closure: the previous gradient stands in for extra-gradient's
    extrapolation. On the first step ``V_0 = V_1``. Same convention as
    ``optax.optimistic_gradient_descent``.

    Hsieh, Iutzeler, Malick, Mertikopoulos, "On the convergence of single-call stochastic
    extra-gradient methods", arXiv 1908.08465. Default ``lr = 0.01``.

    Recipe: ``chain(ScaleByOptimisticGradient, ScaleByLearningRate)``.
    """

    hyperparameters = {"lr": 0.01, "og_alpha": 1.0, "og_beta": 1.0}

    def recipe(self) -> GradientTransformation:
        return chain(ScaleByOptimisticGradient(), ScaleByLearningRate())
