"""Adaptive spike clipping: clip entries above a running (EMA) maximum of the gradient."""

from __future__ import annotations

import torch

from gradkit.core.hyperparams import interval
from gradkit.core.max_abs import max_abs
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList

__all__ = ["AdaptiveSpikeClipping"]


class AdaptiveSpikeClipping(GradientTransformation):
    """Stable-SPAM's AdaClip, per tensor.

    With ``M_t = max|g_t|`` (over the tensor)::

        m <- theta m + (1 - theta) M_t;     T = m / (1 - theta^t)
        g <- g * T / M_t   where |g| > T,   else g

    so spiking entries keep their sign and are rescaled to at most the running maximum ``T``
    (bias-corrected EMA of past per-tensor maxima). One scalar of state per tensor.
    Hyperparameter ``theta`` in [0, 1). Per-tensor maxima: on a flat buffer one segmented
    reduction over all tensors (``ctx.segments``), the state one value per tensor. On a CPU
    (eager) a tensor without spikes is passed on uncopied (a host check, free there).

    Huang, Hu, Jaiswal, Wang, Yin, Liu, Yan & Liu, "Stable-SPAM: How to Train in 4-Bit More
    Stably than 16-Bit Adam", arXiv 2502.17055.
    """

    segments = "tensors"
    per_tensor_state = ("max_avg",)
    hyperparameters = (interval("theta", 0.999, 0.0, 1.0, high_open=True),)

    def init(self, params: TensorList) -> State:
        return {"max_avg": [torch.zeros((), dtype=p.dtype, device=p.device) for p in params]}

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        theta = ctx.group["theta"]
        if ctx.segments is not None:
            seg, u, avg = ctx.segments, updates[0], state["max_avg"][0]
            mx = seg.tensor_abs_max(u)
            avg.lerp_(mx, 1.0 - theta)
            thr = avg / ctx.per_step(lambda t: 1.0 - theta**t)
            thr_e, mx_e = seg.expand(thr), seg.expand(mx)
            return ctx.owned([torch.where(u.abs() > thr_e, u * (thr_e / mx_e), u)])
        maxes = max_abs(updates)
        avg = state["max_avg"]
        torch._foreach_lerp_(avg, maxes, 1.0 - theta)
        thresholds = torch._foreach_div(avg, ctx.per_step(lambda t: 1.0 - theta**t))
        # on a CPU (eager) a host check is free: a tensor with no spike passes through uncopied
        check = updates[0].device.type == "cpu" and not torch.compiler.is_compiling()
        out, fresh = [], True
        for u, thr, mx in zip(updates, thresholds, maxes):
            if check and not bool(mx > thr):  # max |u| <= T: no entry is a spike
                out.append(u)
                fresh = False
            else:
                out.append(torch.where(u.abs() > thr, u * (thr / mx), u))
        return ctx.owned(out) if fresh else out
