"""Noise-adaptive layer-wise learning rates for geometry-aware optimizers (LANTON-style).

Per hidden matrix ``l`` of a Muon group, with ``g`` its stochastic gradient and ``m`` its
momentum before the step:

    H_l <- beta2 H_l + (1 - beta2) ||g - m||_*^2       (dual norm of the LMO's norm)
    m   <- mu m + (1 - mu) g
    p_l <- (1 - lr wd) p_l - lr * sqrt((min_j H_j + delta) / (H_l + delta)) * s(shape) * d(m)

``d`` is the LMO direction (``norm="spectral"``: Newton-Schulz ``U V^T``, as in Muon; "l2" and
"linf" also work), ``j`` runs over the matrices of the same param group. Other parameters take
AdamW, split as for ``muon``.

Hao, Gong, Xu, Wang & Liu, "Noise-Adaptive Layerwise Learning Rates: Accelerating Geometry-Aware
Optimization for Deep Neural Network Training", arXiv 2510.14009. The noise
estimate (deviation from the momentum) and the normalization by the least-noisy layer of the
group are gradkit's reading of the abstract; see docs/differences.
"""

from __future__ import annotations

from gradkit.core.transform import GradientTransformation, chain
from gradkit.optim.muon import GeometryAwareOptimizer
from gradkit.optim.registry import register_optimizer
from gradkit.transforms.decay import DecoupledWeightDecay
from gradkit.transforms.noise_adaptive import NoiseAdaptiveDirection
from gradkit.transforms.orthogonalize import ScaleByShape
from gradkit.transforms.scaling import ScaleByLearningRate

__all__ = ["NoiseAdaptiveMuon"]


@register_optimizer(
    "noise_adaptive_muon",
    paper="Noise-Adaptive Layerwise Learning Rates: Accelerating Geometry-Aware Optimization "
    "for Deep Neural Network Training",
    arxiv="2510.14009",
    aliases=("lanton",),
)
class NoiseAdaptiveMuon(GeometryAwareOptimizer):
    """Muon (or another LMO) with noise-adaptive per-layer learning rates; AdamW for the rest.

    Group hyperparameters: ``lr`` (0.02), ``momentum`` (0.95), ``nesterov`` (False), ``beta2``
    (0.99), ``noise_delta`` (1e-12), ``norm`` ("spectral"), ``ns_steps`` (5), ``scale``
    ("spectral"), ``weight_decay`` (0). Construction options: the ``adamw_*`` ones of ``muon``
    and ``fused`` (compile the Newton-Schulz iteration: None on CUDA only).

    Recipe (matrix groups): ``chain(NoiseAdaptiveDirection, ScaleByShape, DecoupledWeightDecay,
    ScaleByLearningRate)``.
    """

    hyperparameters = {
        "lr": 0.02,
        "momentum": 0.95,
        "nesterov": False,
        "beta2": 0.99,
        "noise_delta": 1e-12,
        "norm": "spectral",
        "ns_steps": 5,
        "scale": "spectral",
        "weight_decay": 0.0,
    }

    def matrix_recipe(self, *, fused: bool | None) -> GradientTransformation:
        return chain(
            NoiseAdaptiveDirection(fused=fused),
            ScaleByShape(),
            DecoupledWeightDecay(),
            ScaleByLearningRate(),
        )
