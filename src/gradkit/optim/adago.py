"""AdaGO: Muon's orthogonalized direction with an AdaGrad-norm step size.

Per hidden matrix, with ``g`` its stochastic gradient:

    m <- mu m + (1 - mu) g                        (Nesterov look-ahead optional, off)
    v^2 <- v^2 + min(||g||_F^2, gamma^2)
    alpha <- max(eps, lr * min(||g||_F, gamma) / v)
    p <- (1 - lr wd) p - alpha * s(shape) * NS_5(m)

Zhang, Liu & Schaeffer, "AdaGrad Meets Muon: Adaptive Stepsizes for Orthogonal Updates", arXiv
2509.02981. Other parameters take AdamW, split as for ``muon``. ``scale`` defaults
to "none" (the paper has no shape factor).

pytorch-optimizer's ``AdaGO`` (4.1.0) divides by the accumulated squared norms ``v^2`` rather than
by ``v``; gradkit follows the paper (see docs/differences).
"""

from __future__ import annotations

from gradkit.core.transform import GradientTransformation, chain
from gradkit.optim.muon import GeometryAwareOptimizer
from gradkit.optim.registry import register_optimizer
from gradkit.transforms.adagrad_norm import ScaleByAdaGradNorm
from gradkit.transforms.decay import DecoupledWeightDecay
from gradkit.transforms.ema_momentum import EMAMomentum
from gradkit.transforms.orthogonalize import Orthogonalize

__all__ = ["AdaGO"]


@register_optimizer(
    "adago",
    paper="AdaGrad Meets Muon: Adaptive Stepsizes for Orthogonal Updates",
    arxiv="2509.02981",
)
class AdaGO(GeometryAwareOptimizer):
    """Orthogonalized momentum with an AdaGrad-norm step size; AdamW for non-matrix parameters.

    Group hyperparameters: ``lr`` (5e-2), ``momentum`` (0.95), ``nesterov`` (False), ``gamma``
    (10), ``eps`` (5e-4, step-size floor), ``v`` (1e-6, initial accumulator), ``ns_steps`` (5),
    ``scale`` ("none"), ``weight_decay`` (0). Construction options: the ``adamw_*`` ones of
    ``muon`` and ``fused`` (compile the Newton-Schulz iteration: None on CUDA only).

    Recipe (matrix groups): ``chain(EMAMomentum, Orthogonalize, DecoupledWeightDecay,
    ScaleByAdaGradNorm)``.
    """

    hyperparameters = {
        "lr": 5e-2,
        "momentum": 0.95,
        "nesterov": False,
        "gamma": 10.0,
        "eps": 5e-4,
        "v": 1e-6,
        "ns_steps": 5,
        "scale": "none",
        "weight_decay": 0.0,
    }

    def matrix_recipe(self, *, fused: bool | None) -> GradientTransformation:
        return chain(
            EMAMomentum(), Orthogonalize(fused=fused), DecoupledWeightDecay(), ScaleByAdaGradNorm()
        )
