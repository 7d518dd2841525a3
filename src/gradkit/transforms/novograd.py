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
    paper. Per-tensor reduction (``flat_ok = False``).

    Ginsburg et al., "Stochastic Gradient Methods with Layer-wise Adaptive Moments for Training
    of Deep Networks", arXiv 1905.11286.
    """

    flat_ok = False
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
