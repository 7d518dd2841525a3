"""AdEMAMix: Adam with a fast and a slow EMA of the gradient."""

from __future__ import annotations

from gradkit.core.transform import GradientTransformation, chain
from gradkit.optim._base import RecipeOptimizer
from gradkit.optim.registry import register_optimizer
from gradkit.transforms.ademamix import ScaleByAdEMAMix
from gradkit.transforms.decay import DecoupledWeightDecay
from gradkit.transforms.scaling import ScaleByLearningRate

__all__ = ["AdEMAMix"]


@register_optimizer(
    "ademamix",
    paper="The AdEMAMix Optimizer: Better, Faster, Older",
    arxiv="2409.03137",
)
class AdEMAMix(RecipeOptimizer):
    """AdEMAMix (Algorithm 1 of the paper).

    ``m1 <- b1 m1 + (1-b1) g``; ``m2 <- b3(t) m2 + (1-b3(t)) g``; ``v <- b2 v + (1-b2) g^2``;
    ``p <- p - lr * ((m1 / (1-b1^t) + alpha(t) m2) / (sqrt(v / (1-b2^t)) + eps) + wd * p)``.

    ``alpha(t) = min(t alpha / T_alpha, alpha)`` and
    ``b3(t) = min(exp(ln b1 ln b3 / ((1 - t/T_b3) ln b3 + (t/T_b3) ln b1)), b3)`` warm up over
    ``alpha_warmup`` = T_alpha and ``beta3_warmup`` = T_b3 steps; the paper sets both to the
    total number of iterations (None here: no warmup). Weight decay is decoupled, as in the
    paper. Defaults: ``betas=(0.9, 0.999, 0.9999)``, ``alpha=5``.

    Recipe: ``chain(ScaleByAdEMAMix, DecoupledWeightDecay, ScaleByLearningRate)``.
    """

    hyperparameters = {
        "lr": 1e-3,
        "betas": (0.9, 0.999, 0.9999),
        "alpha": 5.0,
        "alpha_warmup": None,
        "beta3_warmup": None,
        "eps": 1e-8,
        "weight_decay": 0.0,
    }

    def recipe(self) -> GradientTransformation:
        return chain(ScaleByAdEMAMix(), DecoupledWeightDecay(), ScaleByLearningRate())
