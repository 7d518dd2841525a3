"""Steepest descent with momentum under a chosen norm (the non-Euclidean trust-region method).

    m <- mu m + (1 - mu) g         (``m_0 = 0``; Nesterov look-ahead optional)
    p <- (1 - lr wd) p - lr * d(m),    d = argmax_{||d|| <= 1} <m, d>   per tensor

with ``norm="spectral"``: ``d = U V^T`` (Muon's direction, by Newton-Schulz), ``"l2"``:
``d = m / ||m||_F`` (normalized SGD with momentum, Cutkosky & Mehta 2020), ``"linf"``:
``d = sign(m)`` (signSGD with momentum / Signum). Kovalev, "Understanding Gradient
Orthogonalization for Deep Learning via Non-Euclidean Trust-Region Optimization", arXiv
2503.12645; Bernstein & Newhouse, "Old Optimizer, New Norm: An Anthology", arXiv
2409.20325. Applies the same norm to every parameter; for the per-role split
(matrices vs the rest) use ``muon``.
"""

from __future__ import annotations

from gradkit.core.transform import GradientTransformation, chain
from gradkit.optim._base import RecipeOptimizer
from gradkit.optim.registry import register_optimizer
from gradkit.transforms.decay import DecoupledWeightDecay
from gradkit.transforms.ema_momentum import EMAMomentum
from gradkit.transforms.lmo import SteepestDirection
from gradkit.transforms.scaling import ScaleByLearningRate

__all__ = ["SteepestDescent"]


@register_optimizer(
    "steepest_descent",
    paper="Understanding Gradient Orthogonalization for Deep Learning via Non-Euclidean "
    "Trust-Region Optimization",
    arxiv="2503.12645",
    aliases=("lmo", "non_euclidean_trust_region"),
)
class SteepestDescent(RecipeOptimizer):
    """Momentum, then the unit-norm steepest direction per tensor under ``norm``.

    Hyperparameters: ``lr`` (0.01), ``momentum`` (0.9; 0 disables it), ``nesterov`` (False),
    ``norm`` ("spectral" | "l2" | "linf"), ``ns_steps`` (5, spectral only), ``weight_decay``
    (0, decoupled). Vectors under "spectral" are ``(1, n)`` matrices: their direction is
    ``m / ||m||``.

    Recipe: ``chain(EMAMomentum, SteepestDirection, DecoupledWeightDecay, ScaleByLearningRate)``.
    """

    hyperparameters = {
        "lr": 0.01,
        "momentum": 0.9,
        "nesterov": False,
        "norm": "spectral",
        "ns_steps": 5,
        "weight_decay": 0.0,
    }

    def recipe(self) -> GradientTransformation:
        return chain(
            EMAMomentum(), SteepestDirection(), DecoupledWeightDecay(), ScaleByLearningRate()
        )
