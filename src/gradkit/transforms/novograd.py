"""NovoGrad: a layer-wise (per-tensor) scalar second moment and normalized-gradient momentum."""

from __future__ import annotations

import torch

from gradkit.core.hyperparams import betas, interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList

__all__ = ["ScaleByNovoGrad"]


class ScaleByNovoGrad(GradientTransformation):
    """NovoGrad's momentum of layer-normalized gradients (Algorithm 1 of the paper).

    Per tensor (layer) ``l``: ``v_l <- ||g_l||^2`` at the first step, else
    ``v_l <- b2 v_l + (1-b2) ||g_l||^2`` (one scalar per tensor);
    ``u_l = g_l / (sqrt(v_l) + eps) + wd * w_l``; ``m_l <- b1 m_l + u_l`` (``m_l = u_l`` at the
    first step). Output ``m``. The weight decay is applied to the normalized gradient, as in the
    paper. Per-tensor norms: on a flat buffer one segmented reduction over all tensors
    (``ctx.segments``), and ``exp_avg_sq`` one buffer with one value per tensor.

    Ginsburg et al., "Stochastic Gradient Methods with Layer-wise Adaptive Moments for Training
    of Deep Networks", arXiv 1905.11286.
    """

    segments = "tensors"
    per_tensor_state = ("exp_avg_sq",)
    hyperparameters = (
        betas("betas", (0.95, 0.98)),
        interval("eps", 1e-8, 0.0, low_open=True),
        interval("weight_decay", 0.0, 0.0),
    )

    def init(self, params: TensorList) -> State:
        return {
            "exp_avg": [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params],
            # one scalar per layer: the paper's memory saving over Adam
            "exp_avg_sq": [torch.zeros((), dtype=p.dtype, device=p.device) for p in params],
        }

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        beta1, beta2 = ctx.group["betas"]
        wd = ctx.group["weight_decay"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        if ctx.segments is not None:
            return self._update_flat(updates[0], m[0], v[0], params[0], ctx)
        norms = torch._foreach_norm(updates)
        sq = torch._foreach_mul(norms, norms)
        first = [i for i, t in enumerate(ctx.steps) if t == 1]
        rest = [i for i, t in enumerate(ctx.steps) if t != 1]
        for i in first:  # v_1 = ||g_1||^2
            v[i].copy_(sq[i])
        if rest:
            torch._foreach_lerp_([v[i] for i in rest], [sq[i] for i in rest], 1 - beta2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, ctx.group["eps"])
        if not first:  # m <- b1 m + g / d (+ wd w) in place, no normalized copy
            torch._foreach_mul_(m, beta1)
            torch._foreach_addcdiv_(m, updates, denom)
            if wd != 0:
                torch._foreach_add_(m, params, alpha=wd)
            return m
        normalized = torch._foreach_div(updates, denom)
        if wd != 0:
            torch._foreach_add_(normalized, params, alpha=wd)
        for i in first:  # m_1 = u_1
            m[i].copy_(normalized[i])
        if rest:
            m_rest = [m[i] for i in rest]
            torch._foreach_mul_(m_rest, beta1)
            torch._foreach_add_(m_rest, [normalized[i] for i in rest])
        return m  # state buffer: later transforms copy before changing it

    @staticmethod
    def _update_flat(
        g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, p: torch.Tensor, ctx: StepContext
    ) -> TensorList:
        """The rule on one flat buffer (every tensor on the same step): ``v`` holds one value
        per tensor; the layer norms are one segmented reduction."""
        seg = ctx.segments
        assert seg is not None
        beta1, beta2 = ctx.group["betas"]
        wd = ctx.group["weight_decay"]
        sq = seg.tensor_sum(g * g)
        first = ctx.step == 1
        if first:
            v.copy_(sq)
        else:
            v.lerp_(sq, 1 - beta2)
        normalized = g / seg.expand(v.sqrt() + ctx.group["eps"])
        if first:
            m.copy_(normalized)
        else:  # the order of the per-tensor path: (b1 m + g / d) + wd w
            m.mul_(beta1).add_(normalized)
        if wd != 0:
            m.add_(p, alpha=wd)
        return [m]
