"""MARS: variance-reduced (scaled recursive-momentum) gradients into AdamW or Lion."""

from __future__ import annotations

from gradkit.core.hyperparams import choice
from gradkit.core.transform import GradientTransformation, chain
from gradkit.optim._base import RecipeOptimizer
from gradkit.optim.registry import register_optimizer
from gradkit.transforms.decay import DecoupledWeightDecay
from gradkit.transforms.mars import MarsCorrection
from gradkit.transforms.moments import ScaleByAdam
from gradkit.transforms.scaling import ScaleByLearningRate
from gradkit.transforms.sign_momentum import SignOfMomentum

__all__ = ["MARS", "MARS_TYPES"]

MARS_TYPES = ("adamw", "lion")


@register_optimizer(
    "mars",
    paper="MARS: Unleashing the Power of Variance Reduction for Training Large Models",
    arxiv="2411.10438",
)
class MARS(RecipeOptimizer):
    """MARS-AdamW (default) and MARS-Lion, approximate variant (one gradient per step).

    ``c = g_t + gamma * b1 / (1 - b1) * (g_t - g_{t-1})`` (zero correction on the first step);
    ``c <- c / ||c||`` if ``||c|| > 1`` (per tensor, ``max_correction_norm``);
    ``m <- b1 m + (1 - b1) c``; then

    - ``mars_type="adamw"``: ``v <- b2 v + (1 - b2) c^2``,
      ``p <- p - lr * ((m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps) + wd * p)``;
    - ``mars_type="lion"``: ``p <- p - lr * (sign(m) + wd * p)``.

    Defaults from the paper and the authors' code: ``lr=3e-3``, ``betas=(0.95, 0.99)``,
    ``gamma=0.025``, ``weight_decay=0``. The authors' code trains 1-D tensors (biases, norm
    gains) with plain AdamW (``betas=(0.9, 0.95)``, ``weight_decay=0.1``); here every tensor of
    a group gets MARS. For the authors' split, give the 1-D tensors their own group with
    ``gamma=0, max_correction_norm=None`` (which is exactly AdamW) and those betas.

    Recipe: ``chain(MarsCorrection, ScaleByAdam | SignOfMomentum, DecoupledWeightDecay,
    ScaleByLearningRate)``.
    """

    hyperparameters = {
        "lr": 3e-3,
        "betas": (0.95, 0.99),
        "gamma": 0.025,
        "max_correction_norm": 1.0,
        "eps": 1e-8,
        "weight_decay": 0.0,
        "amsgrad": False,
    }
    options = (choice("mars_type", "adamw", MARS_TYPES),)

    def recipe(self, *, mars_type: str) -> GradientTransformation:
        direction = ScaleByAdam() if mars_type == "adamw" else SignOfMomentum()
        return chain(MarsCorrection(), direction, DecoupledWeightDecay(), ScaleByLearningRate())
