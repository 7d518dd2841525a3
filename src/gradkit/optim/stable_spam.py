"""Stable-SPAM: Adam with adaptive spike clipping, adaptive norm scaling and momentum reset."""

from __future__ import annotations

from gradkit.core.transform import GradientTransformation, chain
from gradkit.optim._base import RecipeOptimizer
from gradkit.optim.registry import register_optimizer
from gradkit.transforms.decay import DecoupledWeightDecay
from gradkit.transforms.grad_norm_scaling import AdaptiveGradNormScaling
from gradkit.transforms.momentum_reset import ScaleByAdamWithReset
from gradkit.transforms.scaling import ScaleByLearningRate
from gradkit.transforms.spike_clipping import AdaptiveSpikeClipping

__all__ = ["StableSPAM"]


@register_optimizer(
    "stable_spam",
    paper="Stable-SPAM: How to Train in 4-Bit More Stably than 16-Bit Adam",
    arxiv="2502.17055",
    aliases=("stablespam",),
)
class StableSPAM(RecipeOptimizer):
    """Stable-SPAM, per tensor at step ``t``:

    1. AdaClip: ``mx <- theta mx + (1-theta) max|g|``; entries with
       ``|g| > T = mx / (1-theta^t)`` become ``g * T / max|g|``.
    2. AdaGN: ``n = ||g||``; ``mn <- g1 mn + (1-g1) n``; ``vn <- g2 vn + (1-g2) n^2``;
       ``g <- g / n * (mn / (1-g1^t)) / (sqrt(vn / (1-g2^t)) + eps)``.
    3. Momentum reset: every ``reset_interval`` steps Adam's moments are zeroed and their bias
       correction restarts.
    4. AdamW: ``p <- p - lr * (m_hat / (sqrt(v_hat) + eps) + wd * p)``.

    With ``t_max`` set, ``g1`` and Adam's ``b1`` are scaled by a cosine decay from 1 to
    ``eta_min`` over ``t_max`` steps. Defaults from the paper's 4-bit setting:
    ``gamma1=0.7, gamma2=0.9, theta=0.999``, ``reset_interval=1000``.

    Recipe: ``chain(DecoupledWeightDecay, AdaptiveSpikeClipping, AdaptiveGradNormScaling,
    ScaleByAdamWithReset, ScaleByLearningRate)``.
    """

    hyperparameters = {
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "gamma1": 0.7,
        "gamma2": 0.9,
        "theta": 0.999,
        "reset_interval": 1000,
        "t_max": None,
        "eta_min": 0.5,
        "eps": 1e-8,
        "weight_decay": 0.0,
    }

    def recipe(self) -> GradientTransformation:
        return chain(
            DecoupledWeightDecay(),
            AdaptiveSpikeClipping(),
            AdaptiveGradNormScaling(),
            ScaleByAdamWithReset(),
            ScaleByLearningRate(),
        )
