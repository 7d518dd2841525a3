"""AMSGrad: Adam with the running maximum of the second moment."""

from __future__ import annotations

from gradkit.core.hyperparams import choice
from gradkit.core.transform import GradientTransformation, chain
from gradkit.optim._base import RecipeOptimizer
from gradkit.optim.registry import register_optimizer
from gradkit.transforms.decay import l2_regularization
from gradkit.transforms.moments import ScaleByAdam
from gradkit.transforms.scaling import ScaleByLearningRate

__all__ = ["AMSGrad"]


@register_optimizer("amsgrad", paper="On the Convergence of Adam and Beyond", arxiv="1904.09237")
class AMSGrad(RecipeOptimizer):
    """AMSGrad, matching ``torch.optim.Adam(amsgrad=True)``.

     ``g <- g + wd * p``; ``m <- b1 m + (1-b1) g``; ``v <- b2 v + (1-b2) g^2``;
     ``v_max <- max(v_max, v)``; ``p <- p - lr * (m / (1-b1^t)) / (sqrt(v_max / (1-b2^t)) + eps)``.

     The maximum keeps a long-term memory of large gradients, so the effective step size never
     grows; this fixes the convex counter-example on which Adam converges to the worst point.
     The paper's algorithm has no bias correction and a decaying ``lr / sqrt(t)``; like
     torch.optim this version bias-corrects (see docs/differences.md).

     Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond", ICLR 2018, arXiv 1904.09237
    . Recipe: ``chain(l2_regularization, ScaleByAdam(amsgrad), ScaleByLearningRate)``.
    """

    hyperparameters = {
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 0.0,
        "amsgrad": choice("amsgrad", True, (True,)),
    }

    def recipe(self) -> GradientTransformation:
        return chain(l2_regularization(), ScaleByAdam(), ScaleByLearningRate())
