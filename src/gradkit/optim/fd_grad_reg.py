"""Gradient regularization by finite differences over any base optimizer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gradkit.core.hyperparams import choice, interval
from gradkit.optim._wrapper import WrapperOptimizer, closure_error
from gradkit.optim.registry import register_optimizer

__all__ = ["FiniteDifferenceGR"]

SCHEMES = ("forward", "backward")


@register_optimizer(
    "fd_grad_reg",
    paper="Understanding Gradient Regularization in Deep Learning: Efficient Finite-Difference "
    "Computation and Implicit Bias",
    arxiv="2210.02720",
)
class FiniteDifferenceGR(WrapperOptimizer):
    """Gradient regularization: descend ``L + (gamma/2) ||grad L||^2`` with finite differences.

    The regularized gradient is ``g + gamma H g`` (``g = grad L(w)``, ``H`` the Hessian); the
    Hessian-vector product is taken as a finite difference of two gradients, along the gradient
    itself, with step ``eps = fd_step`` (two closure calls per step, no double backprop)::

        g    = grad L(w)
        g'   = grad L(w + s eps g)      # s = +1: "forward" (an ascent step, F-GR, the default)
                                        # s = -1: "backward" (a descent step, B-GR)
        d    = g + s (gamma / eps) (g' - g)          # = g + gamma H g + O(eps)
        w   <- base_optimizer.step(w, d)             # the weights are w again before the step

    i.e. ``d = (1 - gamma/eps) g + (gamma/eps) g'`` forward. The error of ``d`` against
    ``g + gamma H g`` is ``s (gamma eps / 2) D^3L[g, g] + O(eps^2)``: first order in ``eps``, and
    zero for a quadratic loss. With ``eps = gamma`` the forward form is the gradient at the
    ascent point ``w + gamma g``: SAM without SAM's normalization of the ascent step. The paper
    finds the forward form with a fairly large ascent step generalizes best.

    The base optimizer (a registered name or a ``torch.optim`` class, default SGD; further
    keywords go to it) keeps all state, so ``state_dict`` is the base's. After the step the
    parameters' ``.grad`` hold ``d``. ``gamma``, ``fd_step`` and ``scheme`` are per-group
    settings. ``maximize=True`` groups are refused.

    Karakida, Takase, Hayase, Osawa, "Understanding Gradient Regularization in Deep Learning:
    Efficient Finite-Difference Computation and Implicit Bias", ICML 2023, arXiv 2210.02720.
    Defaults ``gamma = 0.01``, ``fd_step = 0.01`` (``eps = gamma``) are ours; the paper tunes
    both per task.
    """

    wrapper_hyperparameters = (
        interval("gamma", 0.01, 0.0),
        interval("fd_step", 0.01, 0.0, low_open=True),
        choice("scheme", "forward", SCHEMES),
    )

    def __init__(self, params: Any, base_optimizer: Any = "sgd", **kwargs: Any) -> None:
        super().__init__(params, base_optimizer, **kwargs)
        self._refuse_maximize()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self.__dict__.get("_base") is not None:  # groups of the constructor: checked after
            self._refuse_maximize([param_group])
        super().add_param_group(param_group)

    def _refuse_maximize(self, groups: list[dict[str, Any]] | None = None) -> None:
        if any(g.get("maximize", False) for g in groups or self.param_groups):
            raise ValueError(
                "Invalid maximize: FiniteDifferenceGR takes only maximize=False param groups "
                "(its finite difference is written for descent)"
            )

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Evaluate the closure at ``w`` and at ``w + s eps g``, restore ``w``, step the base."""
        if closure is None:
            raise closure_error(
                "FiniteDifferenceGR",
                "it evaluates the gradient at the weights and at a finite-difference point.",
            )
        self._refuse_maximize()  # maximize is a live group setting: it may have been set since
        loss = self._evaluate(closure)
        params, grads, _ = self._with_grads()
        if not params:
            self.base_optimizer.step()
            return loss
        per = [g for g in self.param_groups for p in g["params"] if p.grad is not None]
        gamma = [g["gamma"] for g in per]
        eps = [g["fd_step"] for g in per]
        sign = [1.0 if g["scheme"] == "forward" else -1.0 for g in per]
        saved = [p.clone() for p in params]
        g0 = [g.clone() for g in grads]
        for p, g, e, s in zip(params, g0, eps, sign):
            p.add_(g, alpha=s * e)
        self._evaluate(closure)
        g1 = self._current_grads(params)
        torch._foreach_copy_(params, saved)
        for p, a0, a1, ga, e, s in zip(params, g0, g1, gamma, eps, sign):
            direction = a0.add(a1 - a0, alpha=s * ga / e)
            if p.grad is None:
                p.grad = direction
            else:
                p.grad.copy_(direction)
        self.base_optimizer.step()
        return loss
