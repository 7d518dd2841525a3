"""Gradient transforms: the building blocks of every gradkit optimizer.

Each transform works on the whole list of tensors of a param group at once. Compose them with
:func:`gradkit.chain`. Families live in their own modules (moments, decay, scaling, clipping,
finite, ...); this package re-exports the foundation ones.
"""

from gradkit.transforms.clipping import ClipByGlobalNorm, global_norm
from gradkit.transforms.decay import (
    AddDecayedWeights,
    DecoupledWeightDecay,
    decoupled_weight_decay,
    l2_regularization,
)
from gradkit.transforms.finite import NonFiniteGradientError, RejectNonFinite
from gradkit.transforms.moments import Momentum, ScaleByAdam
from gradkit.transforms.orthogonal_gradient import OrthogonalGradient
from gradkit.transforms.scaling import Scale, ScaleByLearningRate, Sign

__all__ = [
    "AddDecayedWeights",
    "ClipByGlobalNorm",
    "DecoupledWeightDecay",
    "Momentum",
    "NonFiniteGradientError",
    "OrthogonalGradient",
    "RejectNonFinite",
    "Scale",
    "ScaleByAdam",
    "ScaleByLearningRate",
    "Sign",
    "decoupled_weight_decay",
    "global_norm",
    "l2_regularization",
]
