"""AdaMomentum: Adam with the second moment of the momentum instead of the gradient."""

from __future__ import annotations

from gradkit.core.transform import GradientTransformation, chain
from gradkit.optim._base import RecipeOptimizer
from gradkit.optim.registry import register_optimizer
from gradkit.transforms.adamomentum import ScaleByAdaMomentum
from gradkit.transforms.decay import decoupled_weight_decay
from gradkit.transforms.scaling import ScaleByLearningRate

__all__ = ["AdaMomentum"]


@register_optimizer(
    "adamomentum",
    paper="Rethinking Adam: A Twofold Exponential Moving Average Approach",
    arxiv="2106.11514",
)
class AdaMomentum(RecipeOptimizer):
    """AdaMomentum (the paper's algorithm box).

    ``m <- b1 m + (1-b1) g``; ``v <- b2 v + (1-b2) m^2 + eps``;
    ``p <- (1 - lr * wd) p - lr * (m / (1-b1^t)) / sqrt(v / (1-b2^t))``.

    Scaling by the second moment of the (smoother) momentum rather than of the raw gradient;
    the paper reports SGD-like generalization at Adam-like speed. Weight decay is decoupled
    (AdamW style; 0 by default, the algorithm box has none).

    Wang et al., "Rethinking Adam: A Twofold Exponential Moving Average Approach",
    arXiv 2106.11514.
    Recipe: ``chain(ScaleByAdaMomentum, decoupled_weight_decay, ScaleByLearningRate)``.
    """

    hyperparameters = {
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 0.0,
    }

    def recipe(self) -> GradientTransformation:
        return chain(ScaleByAdaMomentum(), decoupled_weight_decay(), ScaleByLearningRate())
