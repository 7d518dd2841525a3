"""AdamP: Adam with the radial component of the update removed for scale-invariant weights."""

from __future__ import annotations

from gradkit.core.transform import GradientTransformation, chain
from gradkit.optim._base import RecipeOptimizer
from gradkit.optim.registry import register_optimizer
from gradkit.transforms.nesterov_adam import ScaleByAdamNesterov
from gradkit.transforms.projection import ProjectRadial
from gradkit.transforms.scaling import ScaleByLearningRate

__all__ = ["AdamP"]


@register_optimizer(
    "adamp",
    paper="AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant Weights",
    arxiv="2006.08217",
)
class AdamP(RecipeOptimizer):
    """AdamP.

    ``d = (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)`` (Adam; Nesterov numerator
    ``b1 m + (1-b1) g`` with ``nesterov=True``). For each weight with two or more dimensions, if
    ``max |cos(g, w)| < delta / sqrt(dim)`` per output channel (else for the whole tensor) the
    weight is scale-invariant: ``d <- d - w_hat <w_hat, d>`` removes the radial part, and its
    decoupled weight decay is scaled by ``wd_ratio``. ``w <- (1 - lr * wd * r) w - lr * d``.

    Removing the norm-increasing direction keeps the effective step size of scale-invariant
    (normalized) weights from decaying prematurely under momentum.

    Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
    Weights", ICLR 2021, arXiv 2006.08217.
    Recipe: ``chain(ScaleByAdamNesterov, ProjectRadial, ScaleByLearningRate)``.
    """

    hyperparameters = {
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 0.0,
        "delta": 0.1,
        "wd_ratio": 0.1,
        "nesterov": False,
    }

    def recipe(self) -> GradientTransformation:
        return chain(ScaleByAdamNesterov(), ProjectRadial(), ScaleByLearningRate())
