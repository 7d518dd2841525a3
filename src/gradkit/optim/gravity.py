"""Gravity: a kinematic update with a gradient-dependent velocity."""

from __future__ import annotations

from typing import Any

from gradkit.core.transform import GradientTransformation, chain
from gradkit.optim._base import RecipeOptimizer
from gradkit.optim.registry import register_optimizer
from gradkit.transforms.gravity import ScaleByGravity
from gradkit.transforms.scaling import ScaleByLearningRate

__all__ = ["Gravity"]


@register_optimizer(
    "gravity",
    paper="Gravity Optimizer: a Kinematic Approach on Optimization in Deep Learning",
    arxiv="2101.09192",
    seed="P213",
)
class Gravity(RecipeOptimizer):
    """Gravity, per tensor at step ``t``:

    ``M = max|g|``; ``zeta = g / (1 + (g * M)^2)``; ``b_t = (beta t + 1) / (t + 2)``;
    ``V <- b_t V + (1 - b_t) zeta`` with ``V_0 ~ N(0, (alpha / lr)^2)``; ``p <- p - lr V``.

    Defaults proposed by the paper: ``lr=0.1, alpha=0.01, beta=0.9``. The initial velocity is
    drawn from torch's global generator on the first step (seed it for reproducible runs).

    Recipe: ``chain(ScaleByGravity, ScaleByLearningRate)``.
    """

    default_hyperparameters = {"lr": 0.1, "alpha": 0.01, "beta": 0.9}

    def recipe(self, **hp: Any) -> GradientTransformation:
        if not hp["lr"] > 0:
            raise ValueError(
                f"Invalid lr: {hp['lr']!r}; lr must be > 0 (Gravity draws V_0 with std alpha/lr)"
            )
        return chain(ScaleByGravity(), ScaleByLearningRate())
