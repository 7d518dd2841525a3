"""Adam and AdamW."""

from __future__ import annotations

from gradkit.core.transform import GradientTransformation, chain
from gradkit.optim._base import RecipeOptimizer
from gradkit.optim.registry import register_optimizer
from gradkit.transforms import (
    ScaleByAdam,
    ScaleByLearningRate,
    decoupled_weight_decay,
    l2_regularization,
)

__all__ = ["Adam", "AdamW"]


@register_optimizer("adam", paper="Adam: A Method for Stochastic Optimization", arxiv="1412.6980")
class Adam(RecipeOptimizer):
    """Adam with coupled L2 weight decay, matching ``torch.optim.Adam``.

    ``g <- g + wd * p``; ``m <- b1 m + (1-b1) g``; ``v <- b2 v + (1-b2) g^2``;
    ``p <- p - lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)``. ``amsgrad=True`` uses the
    running maximum of ``v`` (Reddi et al., arXiv 1904.09237, ).

    Recipe: ``chain(l2_regularization, ScaleByAdam, ScaleByLearningRate)``.
    """

    hyperparameters = {
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 0.0,
        "amsgrad": False,
    }

    def recipe(self) -> GradientTransformation:
        return chain(l2_regularization(), ScaleByAdam(), ScaleByLearningRate())


@register_optimizer("adamw", paper="Decoupled Weight Decay Regularization", arxiv="1711.05101")
class AdamW(RecipeOptimizer):
    """Adam with decoupled weight decay, matching ``torch.optim.AdamW``.

    ``m, v`` as in Adam on the raw gradient; ``p <- (1 - lr * wd) p - lr * adam_direction``.

    Recipe: ``chain(ScaleByAdam, decoupled_weight_decay, ScaleByLearningRate)``.
    """

    hyperparameters = {
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 1e-2,
        "amsgrad": False,
    }

    def recipe(self) -> GradientTransformation:
        return chain(ScaleByAdam(), decoupled_weight_decay(), ScaleByLearningRate())
