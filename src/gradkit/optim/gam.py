"""GAM: gradient norm aware minimization (first-order flatness) over any base optimizer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gradkit.core.hyperparams import interval
from gradkit.optim._wrapper import WrapperOptimizer, closure_error
from gradkit.optim.registry import register_optimizer
from gradkit.optim.sam import ascent_perturbation

__all__ = ["GAM"]


@register_optimizer(
    "gam",
    paper="Gradient Norm Aware Minimization Seeks First-Order Flatness and Improves Generalization",
    arxiv="2303.03108",
)
class GAM(WrapperOptimizer):
    """Gradient norm aware minimization: descend ``L(w) + alpha * rho * max_{||d||<=rho} ||grad L(w+d)||``.

    The paper's algorithm (Zhang et al., Algorithm 1), with every Hessian-vector product taken as
    a finite difference of two gradients at distance ``r = fd_radius`` (four closure calls per
    step; ``||.||`` is over all parameters, ``xi = perturb_eps``)::

        g0    = grad L(w)
        f     = (grad L(w + r g0/(||g0||+xi)) - g0) / r       # ~ H(w) g0/||g0|| = grad ||grad L||
        w_adv = w + rho * f / (||f|| + xi)                      # ascent on the gradient norm
        g2    = grad L(w_adv)
        h     = rho * (grad L(w_adv + r g2/(||g2||+xi)) - g2) / r   # ~ rho H(w_adv) g2/||g2||
        w    <- base_optimizer.step(w, g0 + alpha * h)

    The base optimizer (a registered name or a ``torch.optim`` class, default SGD; further
    keywords go to it) keeps all state, so ``state_dict`` is the base's. After the step the
    parameters' ``.grad`` hold ``g0 + alpha * h``.

    Zhang, Xu, Yu, Zou, Cui, "Gradient Norm Aware Minimization Seeks First-Order Flatness and
    Improves Generalization", CVPR 2023, arXiv 2303.03108. Defaults: ``rho = 0.02``
    and ``fd_radius = 0.1`` (the gradient-norm and gradient radii of the authors' code),
    ``alpha = 1``.
    """

    wrapper_hyperparameters = (
        interval("rho", 0.02, 0.0),
        interval("alpha", 1.0, 0.0),
        interval("fd_radius", 0.1, 0.0, low_open=True),
        interval("perturb_eps", 1e-12, 0.0, low_open=True),
    )

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Four closure calls (w, w + r u0, w_adv, w_adv + r u2), then one base step."""
        if closure is None:
            raise closure_error(
                "GAM",
                "it evaluates the gradient at four points (the weights, two finite-difference "
                "points and the gradient-norm ascent point).",
            )
        if any(g.get("maximize", False) for g in self.param_groups):
            raise ValueError("GAM does not support maximize=True param groups")
        loss = self._evaluate(closure)
        params, grads, _ = self._with_grads()
        if not params:
            self.base_optimizer.step()
            return loss
        per = [(g, p) for g in self.param_groups for p in g["params"] if p.grad is not None]
        rho = [g["rho"] for g, _ in per]
        alpha = [g["alpha"] for g, _ in per]
        r = [g["fd_radius"] for g, _ in per]
        xi = self.param_groups[0]["perturb_eps"]
        plain = [False] * len(params)
        saved = [p.clone() for p in params]

        g0 = [g.clone() for g in grads]
        # f ~ H(w) g0/||g0||: finite difference along the normalized gradient
        torch._foreach_add_(params, ascent_perturbation(params, g0, r, plain, xi))
        self._evaluate(closure)
        g1 = self._current_grads(params)
        f = [(a - b) / ri for a, b, ri in zip(g1, g0, r)]
        # w_adv: ascent on the gradient norm within radius rho
        torch._foreach_copy_(params, saved)
        torch._foreach_add_(params, ascent_perturbation(params, f, rho, plain, xi))
        self._evaluate(closure)
        g2 = [g.clone() for g in self._current_grads(params)]
        torch._foreach_add_(params, ascent_perturbation(params, g2, r, plain, xi))
        self._evaluate(closure)
        g3 = self._current_grads(params)
        # direction g0 + alpha * rho * (g3 - g2) / r, written into .grad for the base step
        torch._foreach_copy_(params, saved)
        for p, a0, a2, a3, al, rh, ri in zip(params, g0, g2, g3, alpha, rho, r):
            direction = a0.add((a3 - a2), alpha=al * rh / ri)
            if p.grad is None:
                p.grad = direction
            else:
                p.grad.copy_(direction)
        self.base_optimizer.step()
        return loss
