"""Positive-negative momentum with an AMSGrad denominator (AdaPNM), as used by Ranger21."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gradkit.core.hyperparams import betas, flag, interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList
from gradkit.transforms.moments import _adam_denominator

__all__ = ["ScaleByAdaPNM"]


class ScaleByAdaPNM(GradientTransformation):
    """Adaptive positive-negative momentum.

    Two momentum buffers take the gradient on alternate steps, each with decay ``b1^2``; at step
    ``t`` the one updated now is ``m_t`` and the other ``m_{t-1}``::

        m_t  <- b1^2 m_t + (1 - b1^2) g
        pn   = ((1 + b0) m_t - b0 m_{t-1}) / sqrt((1 + b0)^2 + b0^2)
        v    <- b2 v + (1 - b2) g^2;     v_max <- max(v_max, v)        (amsgrad)
        d    = sqrt(v_max) / sqrt(1 - b2^t) + eps;   d <- softplus(d, beta_softplus) (use_softplus)
        out  = pn / d / (1 - b1^t)

    Hyperparameters: ``betas`` (b1, b2), ``beta0`` (b0 >= 0, the noise amplitude of the
    negative momentum), ``eps``, ``amsgrad``, ``use_softplus`` and ``beta_softplus`` (the
    softplus smoothing of the denominator that Ranger21 adds, after Tong et al., arXiv
    1908.00700). The mean of ``v / (1 - b2^t)`` over the group is available to a following
    :class:`~gradkit.transforms.stable_weight_decay.StableWeightDecay` through
    :meth:`mean_second_moment`.

    Xie, Yuan, Zhou, Sato & Sugiyama, "Positive-Negative Momentum: Manipulating Stochastic
    Gradient Noise to Improve Generalization", arXiv 2103.17182; used by Wright & Demeure,
    "Ranger21", arXiv 2106.13731.
    """

    hyperparameters = (
        betas("betas", (0.9, 0.999)),
        interval("beta0", 1.0, 0.0),
        interval("eps", 1e-8, 0.0, low_open=True),
        flag("amsgrad", True),
        flag("use_softplus", False),
        interval("beta_softplus", 50.0, 0.0, low_open=True),
    )

    def init(self, params: TensorList) -> State:
        return {
            "pos_exp_avg": [torch.zeros_like(p) for p in params],
            "neg_exp_avg": [torch.zeros_like(p) for p in params],
            "exp_avg_sq": [torch.zeros_like(p) for p in params],
            "max_exp_avg_sq": [torch.empty(0, dtype=p.dtype, device=p.device) for p in params],
        }

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        group = ctx.group
        beta1, beta2 = group["betas"]
        beta0 = group["beta0"]
        odd = [t % 2 == 1 for t in ctx.steps]
        pos, neg = state["pos_exp_avg"], state["neg_exp_avg"]
        cur = [p if o else n for p, n, o in zip(pos, neg, odd)]
        other = [n if o else p for p, n, o in zip(pos, neg, odd)]
        torch._foreach_lerp_(cur, updates, 1.0 - beta1**2)
        pn = torch._foreach_mul(cur, (1.0 + beta0) / math.hypot(1.0 + beta0, beta0))
        torch._foreach_add_(pn, other, alpha=-beta0 / math.hypot(1.0 + beta0, beta0))

        v = state["exp_avg_sq"]
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, updates, updates, 1.0 - beta2)
        bc2 = [1.0 - beta2**t for t in ctx.steps]
        ctx.shared[id(self)] = (v, bc2)  # for mean_second_moment, later in this step
        vv = v
        if group["amsgrad"]:
            vmax = state["max_exp_avg_sq"]
            for buf, cur_v in zip(vmax, v):
                if buf.numel() == 0 and cur_v.numel() > 0:
                    buf.resize_as_(cur_v).zero_()
            torch._foreach_maximum_(vmax, v)
            vv = vmax
        denom = _adam_denominator(vv, [math.sqrt(b) for b in bc2], group["eps"])
        if group["use_softplus"]:  # in place on the fresh denominator: no second temporary
            denom = [_softplus_(d, group["beta_softplus"]) for d in denom]
        torch._foreach_div_(pn, denom)
        torch._foreach_div_(pn, ctx.per_step(lambda t: 1.0 - beta1**t))
        return ctx.owned(pn)

    def mean_second_moment(self, ctx: StepContext) -> Tensor:
        """Mean over all entries of the group of ``v / (1 - b2^t)`` from this step's update
        (left in ``ctx.shared``)."""
        if id(self) not in ctx.shared:
            raise RuntimeError(
                "ScaleByAdaPNM.mean_second_moment needs the transform's update earlier in the "
                "same step (place StableWeightDecay after ScaleByAdaPNM in the chain)"
            )
        v, bc2 = ctx.shared[id(self)]
        total = torch.stack([(x.sum() / b).float() for x, b in zip(v, bc2)]).sum()
        return total / sum(x.numel() for x in v)


def _softplus_(x: Tensor, beta: float) -> Tensor:
    """``softplus(x, beta)`` (threshold 20, as ``torch.nn.functional.softplus``) written into
    ``x``; traced code gets the out-of-place form (same values)."""
    if torch.compiler.is_compiling():
        return torch.nn.functional.softplus(x, beta=beta)
    return torch.ops.aten.softplus.out(x, beta, 20.0, out=x)
