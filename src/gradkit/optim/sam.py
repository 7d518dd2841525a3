"""SAM: sharpness-aware minimization over any base optimizer (and ASAM, its adaptive form)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit.core.hyperparams import flag, interval
from gradkit.optim._wrapper import WrapperOptimizer, closure_error, global_grad_norm
from gradkit.optim.registry import register_optimizer

__all__ = ["SAM", "ascent_perturbation"]


def ascent_perturbation(
    params: Sequence[Tensor],
    directions: Sequence[Tensor],
    radii: Sequence[float],
    adaptive: Sequence[bool],
    eps: float,
) -> list[Tensor]:
    """``e_i = radius_i * T_i^2 d_i / (||T d|| + eps)`` with ``T = |p|`` where adaptive, else 1.

    The norm runs over all tensors together (every param group), as SAM's perturbation is one
    vector of the whole model.
    """
    weighted = [d * p.abs() if a else d for p, d, a in zip(params, directions, adaptive)]
    norm = global_grad_norm(weighted)
    inv = 1.0 / (norm + eps)
    out = []
    for p, d, r, a in zip(params, directions, radii, adaptive):
        e = d * (p * p) if a else d.clone()
        e.mul_(inv.to(device=e.device, dtype=e.dtype) * r)
        out.append(e)
    return out


@register_optimizer(
    "sam",
    paper="Sharpness-Aware Minimization for Efficiently Improving Generalization",
    arxiv="2010.01412",
)
class SAM(WrapperOptimizer):
    """Sharpness-aware minimization: step with the gradient at the worst nearby point.

    Each step (``g = grad L(w)`` from the closure)::

        e   = rho * g / (||g|| + perturb_eps)            # ||.|| over all parameters
        g~  = grad L(w + e)                              # second closure call
        w  <- base_optimizer.step(w, g~)                 # the weights are w again before the step

    ``adaptive=True`` is ASAM (Kwon et al., "ASAM: Adaptive Sharpness-Aware Minimization for
    Scale-Invariant Learning of Deep Neural Networks", arXiv 2102.11600):
    ``e = rho * w^2 g / (|| |w| g || + perturb_eps)``. Groups with ``maximize=True`` perturb
    along ``-g``. The base optimizer (a registered name or a ``torch.optim`` class; further
    keywords go to it) keeps all state, so ``state_dict`` is the base's.

    Foret, Kleiner, Mobahi, Neyshabur, "Sharpness-Aware Minimization for Efficiently Improving
    Generalization", arXiv 2010.01412; the base of GAM. Defaults: ``rho = 0.05``
    (the paper's most used value).

    Example::

        opt = SAM(model.parameters(), "sgd", rho=0.05, lr=0.1, momentum=0.9)

        def closure():
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)  # evaluates the closure twice
    """

    wrapper_hyperparameters = (
        interval("rho", 0.05, 0.0),
        flag("adaptive", False),
        interval("perturb_eps", 1e-12, 0.0, low_open=True),
    )

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Evaluate the closure at ``w`` and at ``w + e``, restore ``w`` and step the base."""
        if closure is None:
            raise closure_error(
                "SAM", "it evaluates the loss at the current and at the perturbed weights."
            )
        loss = self._evaluate(closure)
        params, grads, signs = self._with_grads()
        if params:
            radii, adaptive = self._per_param("rho"), self._per_param("adaptive")
            eps = self.param_groups[0]["perturb_eps"]
            directions = [g * s if s < 0 else g for g, s in zip(grads, signs)]
            e = ascent_perturbation(params, directions, radii, adaptive, eps)
            saved = [p.clone() for p in params]
            torch._foreach_add_(params, e)
            del e
            self._evaluate(closure)
            torch._foreach_copy_(params, saved)
        self.base_optimizer.step()
        return loss

    def _per_param(self, key: str) -> list[Any]:
        return [g[key] for g in self.param_groups for p in g["params"] if p.grad is not None]
