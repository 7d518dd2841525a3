"""SGDP: SGD with momentum, with the radial component removed for scale-invariant weights."""

from __future__ import annotations

from gradkit.core.transform import GradientTransformation, chain
from gradkit.optim._base import RecipeOptimizer
from gradkit.optim.registry import register_optimizer
from gradkit.transforms.moments import Momentum
from gradkit.transforms.projection import ProjectRadial
from gradkit.transforms.scaling import ScaleByLearningRate

__all__ = ["SGDP"]


@register_optimizer(
    "sgdp",
    paper="AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant Weights",
    arxiv="2006.08217",
)
class SGDP(RecipeOptimizer):
    """SGDP.

    ``b <- mu b + (1 - dampening) g`` (``b <- g`` at first); ``d = b`` (or ``g + mu b`` with
    Nesterov). For each weight with two or more dimensions that passes the cosine test
    ``max |cos(g, w)| < delta / sqrt(dim)`` (per output channel, else whole tensor):
    ``d <- d - w_hat <w_hat, d>`` and its weight decay is scaled by ``wd_ratio``.
    ``w <- (1 - lr * wd * r / (1 - mu)) w - lr * d`` (decoupled decay, as in the authors' code).

    Defaults: ``lr=0.1, momentum=0.9`` (the SGD setting the paper's ImageNet runs start from; the
    authors' code has no default learning rate), ``delta=0.1, wd_ratio=0.1`` from the paper.

    Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
    Weights", ICLR 2021, arXiv 2006.08217.
    Recipe: ``chain(Momentum, ProjectRadial(momentum_key="momentum"), ScaleByLearningRate)``.
    """

    hyperparameters = {
        "lr": 0.1,
        "momentum": 0.9,
        "dampening": 0.0,
        "nesterov": False,
        "weight_decay": 0.0,
        "eps": 1e-8,
        "delta": 0.1,
        "wd_ratio": 0.1,
    }

    def recipe(self) -> GradientTransformation:
        return chain(Momentum(), ProjectRadial(momentum_key="momentum"), ScaleByLearningRate())
