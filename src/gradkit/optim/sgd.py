"""SGD with optional heavy-ball or Nesterov momentum and L2 weight decay."""

from __future__ import annotations

from gradkit.core.transform import GradientTransformation, chain
from gradkit.optim._base import RecipeOptimizer
from gradkit.optim.registry import register_optimizer
from gradkit.transforms import Momentum, ScaleByLearningRate, l2_regularization

__all__ = ["SGD"]


@register_optimizer(
    "sgd",
    paper="A Stochastic Approximation Method (Robbins & Monro, 1951); momentum: "
    "On the importance of initialization and momentum in deep learning",
    arxiv=None,
)
class SGD(RecipeOptimizer):
    """Stochastic gradient descent, matching ``torch.optim.SGD``.

    ``g <- g + wd * p``; ``b <- mu * b + (1 - dampening) * g`` (``b <- g`` at first);
    ``d = g + mu * b`` (Nesterov) or ``b``; ``p <- p - lr * d``.

    Recipe: ``chain(l2_regularization, Momentum, ScaleByLearningRate)``.
    """

    hyperparameters = {
        "lr": 1e-3,
        "momentum": 0.0,
        "dampening": 0.0,
        "nesterov": False,
        "weight_decay": 0.0,
    }

    def recipe(self) -> GradientTransformation:
        return chain(l2_regularization(), Momentum(), ScaleByLearningRate())
