"""Adaptive gradient-norm scaling: rescale each tensor to a running (EMA) estimate of its norm."""

from __future__ import annotations

import math

import torch

from gradkit.core.hyperparams import interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList
from gradkit.transforms._cosine import cosine_decay_factor
from gradkit.transforms._unitwise import positive_int

__all__ = ["AdaptiveGradNormScaling"]


class AdaptiveGradNormScaling(GradientTransformation):
    """Stable-SPAM's AdaGN, per tensor.

    With ``n = ||g||`` (l2 norm of the tensor) and ``g1 = gamma1 * s_t``::

        m <- g1 m + (1 - g1) n;        v <- gamma2 v + (1 - gamma2) n^2
        g <- g / n * (m / (1 - g1^t)) / (sqrt(v / (1 - gamma2^t)) + eps)

    ``s_t`` is 1, or with ``t_max`` set the cosine decay from 1 to ``eta_min`` over ``t_max``
    steps that Stable-SPAM also applies to Adam's beta1. Two scalars of state per tensor. A
    tensor whose gradient is exactly zero stays zero. Per-tensor norms: on a flat buffer one
    segmented reduction over all tensors (``ctx.segments``), each state one value per tensor.

    Huang et al., "Stable-SPAM: How to Train in 4-Bit More Stably than 16-Bit Adam",
    arXiv 2502.17055.
    """

    segments = "tensors"
    per_tensor_state = ("norm_avg", "norm_sq_avg")
    hyperparameters = (
        interval("gamma1", 0.7, 0.0, 1.0, high_open=True),
        interval("gamma2", 0.9, 0.0, 1.0, high_open=True),
        interval("eps", 1e-8, 0.0, low_open=True),
        positive_int("t_max", None, allow_none=True),
        interval("eta_min", 0.5, 0.0, 1.0),
    )

    def init(self, params: TensorList) -> State:
        return {
            "norm_avg": [torch.zeros((), dtype=p.dtype, device=p.device) for p in params],
            "norm_sq_avg": [torch.zeros((), dtype=p.dtype, device=p.device) for p in params],
        }

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        group = ctx.group
        g1 = group["gamma1"] * cosine_decay_factor(ctx.step, group["t_max"], group["eta_min"])
        g2 = group["gamma2"]
        if ctx.segments is not None:
            return self._update_flat(updates[0], state, ctx, g1, g2)
        norms = torch._foreach_norm(updates)
        m, v = state["norm_avg"], state["norm_sq_avg"]
        torch._foreach_lerp_(m, norms, 1.0 - g1)
        torch._foreach_mul_(v, g2)
        torch._foreach_addcmul_(v, norms, norms, 1.0 - g2)
        target = torch._foreach_div(m, ctx.per_step(lambda t: 1.0 - g1**t))
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, ctx.per_step(lambda t: math.sqrt(1.0 - g2**t)))
        torch._foreach_add_(denom, group["eps"])
        torch._foreach_div_(target, denom)
        out = []
        for u, n, c in zip(updates, norms, target):
            scale = torch.where(n > 0, c / n, torch.zeros_like(c))
            out.append(u * scale)
        return ctx.owned(out)

    @staticmethod
    def _update_flat(
        u: torch.Tensor, state: State, ctx: StepContext, g1: float, g2: float
    ) -> TensorList:
        """The rule on one flat buffer: per-tensor norms by one segmented reduction."""
        seg = ctx.segments
        assert seg is not None
        m, v = state["norm_avg"][0], state["norm_sq_avg"][0]
        norms = seg.tensor_norm(u)
        m.lerp_(norms, 1.0 - g1)
        v.mul_(g2).addcmul_(norms, norms, value=1.0 - g2)
        target = m / ctx.per_step(lambda t: 1.0 - g1**t)
        denom = v.sqrt() / ctx.per_step(lambda t: math.sqrt(1.0 - g2**t)) + ctx.group["eps"]
        target = target / denom
        scale = torch.where(norms > 0, target / norms, torch.zeros_like(target))
        return ctx.owned([u * seg.expand(scale)])
