"""diffGrad: Adam with a friction coefficient from the change of the gradient."""

from __future__ import annotations

from gradkit.core.transform import GradientTransformation, chain
from gradkit.optim._base import RecipeOptimizer
from gradkit.optim.registry import register_optimizer
from gradkit.transforms.decay import l2_regularization
from gradkit.transforms.diffgrad import ScaleByDiffGrad
from gradkit.transforms.scaling import ScaleByLearningRate

__all__ = ["DiffGrad"]


@register_optimizer(
    "diffgrad",
    paper="diffGrad: An Optimization Method for Convolutional Neural Networks",
    arxiv="1909.11015",
)
class DiffGrad(RecipeOptimizer):
    """diffGrad.

    ``g <- g + wd * p`` (coupled, as in the authors' code); ``m, v`` as in Adam;
    ``xi = sigmoid(|g_{t-1} - g_t|)`` (``g_0 = 0``);
    ``p <- p - lr * xi * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)``.

    The friction ``xi`` lies in [0.5, 1): steps shrink (down to half of Adam's) where the
    gradient barely changes, e.g. near a flat minimum, and stay Adam-sized where it changes fast.

    Dubey et al., "diffGrad: An Optimization Method for Convolutional Neural Networks",
    IEEE TNNLS 2019, arXiv 1909.11015.
    Recipe: ``chain(l2_regularization, ScaleByDiffGrad, ScaleByLearningRate)``.
    """

    hyperparameters = {
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 0.0,
    }

    def recipe(self) -> GradientTransformation:
        return chain(l2_regularization(), ScaleByDiffGrad(), ScaleByLearningRate())
