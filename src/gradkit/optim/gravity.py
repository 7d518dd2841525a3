"""Gravity: a kinematic update with a gradient-dependent velocity."""

from __future__ import annotations

from gradkit.core.hyperparams import interval
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
)
class Gravity(RecipeOptimizer):
    """Gravity, per tensor at step ``t``:

    ``M = max|g|``; ``zeta = g / (1 + (g * M)^2)``; ``b_t = (beta t + 1) / (t + 2)``;
    ``V <- b_t V + (1 - b_t) zeta`` with ``V_0 ~ N(0, (alpha / lr)^2)``; ``p <- p - lr V``.

    Defaults proposed by the paper: ``lr=0.1, alpha=0.01, beta=0.9``. The initial velocity is
    drawn from torch's global generator on the first step (seed it for reproducible runs).

    Recipe: ``chain(ScaleByGravity, ScaleByLearningRate)``.
    """

    hyperparameters = {
        # lr > 0: V_0 is drawn with std alpha / lr
        "lr": interval("lr", 0.1, 0.0, low_open=True),
        "alpha": 0.01,
        "beta": 0.9,
    }

    def recipe(self) -> GradientTransformation:
        return chain(ScaleByGravity(), ScaleByLearningRate())
