"""SANIA: Polyak-type step sizes with a diagonal preconditioner (no learning rate to tune)."""

from __future__ import annotations

from typing import Any

from gradkit.core.transform import GradientTransformation, chain
from gradkit.optim._base import RecipeOptimizer
from gradkit.optim.registry import register_optimizer
from gradkit.transforms.polyak import ScaleBySaniaPolyak
from gradkit.transforms.scaling import ScaleByLearningRate

__all__ = ["SANIA"]


@register_optimizer(
    "sania",
    paper="SANIA: Polyak-type Optimization Framework Leads to Scale Invariant Stochastic "
    "Algorithms",
    arxiv="2312.17369",
)
class SANIA(RecipeOptimizer):
    """SANIA: ``w <- w - lr * tau_t * B_t^{-1} g`` with a Polyak-type ``tau_t`` from the loss.

    The step solves ``min ||w - w_t||_{B_t}`` subject to the quadratic model of the loss reaching
    ``f_star``: ``f + <g, w - w_t> + 1/2 ||w - w_t||^2_{B_t} = f_star``. With ``f = loss - f_star``
    and ``q = ||g||^2_{B_t^{-1}}``: ``tau_t = 1 - sqrt(1 - 2 f / q)`` if ``2 f <= q``, else
    ``tau_t = 1`` (the model's minimizer). ``B_t`` is diagonal: ``"adagrad_sqr"`` (sum of squared
    gradients, no square root: the paper's scale-invariant AdaGrad-SQR, the default),
    ``"adam_sqr"`` (bias-corrected EMA of squared gradients), ``"adagrad"``/``"adam"`` (their
    square roots) or ``"identity"``; floored at ``eps``. ``lr`` is a plain multiplier (1 in the
    paper, which has no step size to tune).

    The step needs the loss, so ``step`` needs a closure; the Polyak step is one number for the
    whole gradient, so SANIA takes a single param group.

    Abdukhakimov, Xiang, Kamzolov, Gower, Takac, "SANIA: Polyak-type Optimization Framework Leads
    to Scale Invariant Stochastic Algorithms", arXiv 2312.17369.

    Recipe: ``chain(ScaleBySaniaPolyak, ScaleByLearningRate)``.
    """

    hyperparameters = {
        "lr": 1.0,
        "preconditioner": "adagrad_sqr",
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "f_star": 0.0,
    }
    requires_closure = True

    def recipe(self) -> GradientTransformation:
        return chain(ScaleBySaniaPolyak(), ScaleByLearningRate())

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self.param_groups:
            raise ValueError(
                "SANIA takes a single param group: its Polyak step size is computed from the loss "
                "and the whole gradient together"
            )
        super().add_param_group(param_group)
