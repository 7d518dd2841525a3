"""AdaGO's step size: an AdaGrad-norm learning rate for an orthogonalized direction."""

from __future__ import annotations

import torch

from gradkit.core.hyperparams import interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList

__all__ = ["ScaleByAdaGradNorm"]


class ScaleByAdaGradNorm(GradientTransformation):
    """The final step ``-alpha_t u`` with an AdaGrad-norm step size per tensor.

    With ``g`` the tensor's raw gradient of this step (``||.||`` the Frobenius norm):

        v^2 <- v^2 + min(||g||^2, gamma^2)            (v^2 starts at ``v``)
        alpha = max(eps, lr * min(||g||, gamma) / v)

    Zhang, Liu & Schaeffer, "AdaGrad Meets Muon: Adaptive Stepsizes for Orthogonal Updates",
    arXiv 2509.02981. Hyperparameters ``lr``, ``gamma`` (> 0, clips the norm),
    ``eps`` (> 0, the step-size floor) and ``v`` (> 0, the initial accumulator ``v_0^2``).
    """

    flat_ok = False
    hyperparameters = (
        interval("lr", 5e-2, 0.0),
        interval("gamma", 10.0, 0.0, low_open=True),
        interval("eps", 5e-4, 0.0, low_open=True),
        interval("v", 1e-6, 0.0, low_open=True),
    )

    def init(self, params: TensorList) -> State:
        # the accumulator starts at NaN and is set to ``v`` on the parameter's first step
        return {
            "sum_sq": [
                torch.full((), float("nan"), dtype=torch.float32, device=p.device) for p in params
            ]
        }

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        g = ctx.group
        acc = state["sum_sq"]
        for i, s in enumerate(ctx.steps):
            if s == 1:
                acc[i].fill_(float(g["v"]))
        norms = torch._foreach_norm([x.float() for x in ctx.grads])
        torch._foreach_clamp_max_(norms, float(g["gamma"]))
        torch._foreach_addcmul_(acc, norms, norms)
        roots = torch._foreach_sqrt(acc)
        lr = g["lr"].item() if isinstance(g["lr"], torch.Tensor) else g["lr"]
        steps = torch._foreach_div(norms, roots)
        torch._foreach_mul_(steps, lr)
        torch._foreach_clamp_min_(steps, float(g["eps"]))
        torch._foreach_neg_(steps)
        out = [u * s.to(u.dtype) for u, s in zip(updates, steps)]
        return ctx.owned(out)
