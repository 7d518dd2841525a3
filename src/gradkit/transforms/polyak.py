"""Preconditioned Polyak step sizes (SANIA)."""

from __future__ import annotations

import torch

from gradkit.core.hyperparams import betas, choice, interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList

__all__ = ["ScaleBySaniaPolyak", "PRECONDITIONERS"]

#: preconditioners ``B_t`` of ScaleBySaniaPolyak (diagonal, from past gradients)
PRECONDITIONERS = ("adagrad_sqr", "adam_sqr", "adagrad", "adam", "identity")


class ScaleBySaniaPolyak(GradientTransformation):
    """SANIA's direction ``tau_t B_t^{-1} g`` with the Polyak-type step ``tau_t`` from the loss.

    ``B_t`` (group hyperparameter ``preconditioner``), elementwise and floored at ``eps``:
    ``"adagrad_sqr"``: ``sum_k g_k^2``; ``"adam_sqr"``: ``v_t / (1 - b2^t)`` with
    ``v_t = b2 v_{t-1} + (1 - b2) g_t^2``; ``"adagrad"`` / ``"adam"``: the square roots of those;
    ``"identity"``: ``1``. With ``f = loss - f_star`` (``ctx.loss``, so the optimizer needs a
    closure) and ``q = <g, B_t^{-1} g>`` over the whole group::

        tau_t = 1 - sqrt(1 - 2 f / q)   if 2 f <= q       (the quadratic Polyak constraint)
        tau_t = 1                        otherwise         (its minimizer: a Newton-type step)

    The step size is computed on the device (no host synchronization). State: one buffer per
    parameter (``"sum_sq"``; zero-size with ``"identity"``).
    """

    hyperparameters = (
        choice("preconditioner", "adagrad_sqr", PRECONDITIONERS),
        betas("betas", (0.9, 0.999)),
        interval("eps", 1e-8, 0.0, low_open=True),
        interval("f_star", 0.0),
    )

    def init(self, params: TensorList) -> State:
        return {"sum_sq": [torch.empty(0, dtype=p.dtype, device=p.device) for p in params]}

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        if ctx.loss is None:
            raise RuntimeError(
                "SANIA's step size needs the loss: pass a closure that returns it to step()"
            )
        kind = ctx.group["preconditioner"]
        eps = ctx.group["eps"]
        if kind == "identity":
            precond = None
        else:
            acc = state["sum_sq"]
            for buf, u in zip(acc, updates):
                if buf.numel() == 0 and u.numel() > 0:
                    buf.resize_as_(u).zero_()
            if kind.startswith("adagrad"):
                torch._foreach_addcmul_(acc, updates, updates)
                precond = [a.clone() for a in acc]
            else:
                beta2 = ctx.group["betas"][1]
                torch._foreach_mul_(acc, beta2)
                torch._foreach_addcmul_(acc, updates, updates, 1 - beta2)
                precond = torch._foreach_div(acc, ctx.per_step(lambda t: 1 - beta2**t))
            torch._foreach_maximum_(precond, eps)
            if not kind.endswith("_sqr"):
                torch._foreach_sqrt_(precond)
        out = list(updates) if precond is None else torch._foreach_div(updates, precond)
        # scalars in float64 when the parameters are, else float32 (bf16/fp16 groups included)
        acc_dtype = (
            torch.float64 if any(u.dtype == torch.float64 for u in updates) else torch.float32
        )
        dots = [torch.sum(u * s, dtype=acc_dtype) for u, s in zip(updates, out)]
        q = torch.stack(dots).sum()
        loss = torch.as_tensor(ctx.loss, device=q.device).detach().to(acc_dtype)
        loss = loss - ctx.group["f_star"]
        ratio = torch.where(q > 0, 2 * loss / q, torch.zeros_like(q))
        tau = torch.where(ratio < 1, 1 - torch.sqrt(torch.clamp(1 - ratio, min=0.0)), 1.0)
        return ctx.owned(torch._foreach_mul(out, tau.to(out[0].dtype)))
