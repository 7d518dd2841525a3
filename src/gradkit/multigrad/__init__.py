"""Several gradients at once: per-task (multi-task learning), per-example or per-class gradients
handed to any optimizer through ``.grad``, and the aggregators that combine them (PCGrad, MGDA,
UPGrad, Bloop, GradNorm). See docs/gradients.md."""

from gradkit.multigrad._backward import (
    MultiGradInfo,
    aggregate_into_grad,
    backward,
    jacobian,
    jacobian_bytes,
    per_example_jacobian,
)
from gradkit.multigrad.aggregators import (
    MGDA,
    Aggregator,
    Bloop,
    GradNorm,
    GramianAggregator,
    Mean,
    PCGrad,
    Sum,
    UPGrad,
    gramian,
)
from gradkit.multigrad.disruption_mask import (
    DisruptionMask,
    disruption_mask_backward,
    disruption_masked_update,
)
from gradkit.multigrad.fish import Fish, fish_backward, fish_inner_loop
from gradkit.multigrad.per_class import PerClassNormalized, per_class_backward, per_class_losses

__all__ = [
    "MGDA",
    "Aggregator",
    "Bloop",
    "DisruptionMask",
    "Fish",
    "GradNorm",
    "GramianAggregator",
    "Mean",
    "MultiGradInfo",
    "PCGrad",
    "PerClassNormalized",
    "Sum",
    "UPGrad",
    "aggregate_into_grad",
    "backward",
    "disruption_mask_backward",
    "disruption_masked_update",
    "fish_backward",
    "fish_inner_loop",
    "gramian",
    "jacobian",
    "jacobian_bytes",
    "per_class_backward",
    "per_class_losses",
    "per_example_jacobian",
]
