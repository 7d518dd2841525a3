"""MADGRAD: momentumized, adaptive, dual-averaged gradient method."""

from __future__ import annotations

from gradkit.core.transform import GradientTransformation, chain
from gradkit.optim._base import RecipeOptimizer
from gradkit.optim.registry import register_optimizer
from gradkit.transforms.decay import l2_regularization
from gradkit.transforms.madgrad import MadgradStep

__all__ = ["MADGRAD"]


@register_optimizer(
    "madgrad",
    paper="Adaptivity without Compromise: A Momentumized, Adaptive, Dual Averaged Gradient "
    "Method for Stochastic Optimization",
    arxiv="2101.11075",
)
class MADGRAD(RecipeOptimizer):
    """MADGRAD.

    ``g <- g + wd * p`` (coupled); ``lambda_t = lr * sqrt(t)``; ``s <- s + lambda_t g``;
    ``nu <- nu + lambda_t g^2``; ``z = x0 - s / (cbrt(nu) + eps)``;
    ``x <- momentum * x + (1 - momentum) * z``.

    Dual averaging from the initial point ``x0`` with an AdaGrad-like but cube-root
    denominator, plus momentum by averaging of iterates. Typical learning rates are lower than
    SGD's and higher than Adam's. The authors' code adds ``eps`` to ``lr``; this follows the
    paper (see docs/differences.md).

    Defazio & Jelassi, "Adaptivity without Compromise: A Momentumized, Adaptive, Dual Averaged
    Gradient Method for Stochastic Optimization", arXiv 2101.11075.
    Recipe: ``chain(l2_regularization, MadgradStep)``.
    """

    hyperparameters = {
        "lr": 1e-2,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "eps": 1e-6,
    }

    def recipe(self) -> GradientTransformation:
        return chain(l2_regularization(), MadgradStep())
