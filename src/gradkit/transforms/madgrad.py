"""MADGRAD: momentumized, adaptive, dual-averaged steps with a cube-root denominator."""

from __future__ import annotations

import math

import torch

from gradkit.core.elementwise_math import cube_root
from gradkit.core.hyperparams import interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList

__all__ = ["MadgradStep"]


def _scalar(value: object) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


class MadgradStep(GradientTransformation):
    """MADGRAD's step (returns the change of the parameters; put it last in a chain).

    With ``lambda_t = lr * sqrt(t)`` (t = 1, 2, ...):
    ``s <- s + lambda_t g``; ``nu <- nu + lambda_t g^2``; ``z = x0 - s / (cbrt(nu) + eps)``;
    ``x <- (1 - c) x + c z`` with ``c = 1 - momentum``. ``x0`` is the parameter at the first
    step (allocated only when ``momentum > 0``); with ``momentum == 0`` the step is
    ``s_old / (cbrt(nu_old) + eps) - s / (cbrt(nu) + eps)`` and no ``x0`` is stored.
    The learning rate enters through ``lambda_t`` (dual averaging), so this transform reads
    ``lr`` itself. Elementwise.

    Defazio & Jelassi, "Adaptivity without Compromise: A Momentumized, Adaptive, Dual Averaged
    Gradient Method for Stochastic Optimization", arXiv 2101.11075.
    """

    hyperparameters = (
        interval("lr", 1e-2, 0.0),
        interval("momentum", 0.9, 0.0, 1.0, high_open=True),
        interval("eps", 1e-6, 0.0, low_open=True),
    )

    def init(self, params: TensorList) -> State:
        def zeros() -> TensorList:
            return [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]

        return {
            "grad_sum_sq": zeros(),
            "grad_sum": zeros(),
            # zero-size until momentum > 0 is used: x0 is then the parameter at that step
            "x0": [torch.empty(0, dtype=p.dtype, device=p.device) for p in params],
        }

    def _ratio(self, s: TensorList, nu: TensorList, eps: float) -> TensorList:
        denom = cube_root(nu)
        torch._foreach_add_(denom, eps)
        return torch._foreach_div(s, denom)

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        lr = _scalar(ctx.group["lr"])
        mom = ctx.group["momentum"]
        eps = ctx.group["eps"]
        s, nu, x0 = state["grad_sum"], state["grad_sum_sq"], state["x0"]
        if mom == 0:
            before = self._ratio(s, nu, eps)
        else:
            fresh = [i for i, b in enumerate(x0) if b.numel() == 0 and params[i].numel() > 0]
            if fresh:  # x0 = p + s / rms, which is p on the first step (allocation only)
                ratio = self._ratio([s[i] for i in fresh], [nu[i] for i in fresh], eps)
                for i, r in zip(fresh, ratio):
                    x0[i].resize_as_(params[i]).copy_(params[i]).add_(r)
        lams = [lr * math.sqrt(t) for t in ctx.steps]
        if all(lam == lams[0] for lam in lams):
            weighted = torch._foreach_mul(updates, ctx.loop_scalar(lams[0]))
        else:
            weighted = torch._foreach_mul(updates, lams)
        torch._foreach_add_(s, weighted)
        torch._foreach_addcmul_(nu, weighted, updates)
        after = self._ratio(s, nu, eps)
        if mom == 0:
            torch._foreach_sub_(before, after)
            return ctx.owned(before)
        # z - x = x0 - s/rms - x;  step = (1 - momentum) * (z - x)
        out = torch._foreach_sub(x0, after)
        torch._foreach_sub_(out, params)
        torch._foreach_mul_(out, 1.0 - mom)
        return ctx.owned(out)

    def apply_step(
        self, params: TensorList, updates: TensorList, state: State, ctx: StepContext
    ) -> None:
        """The same step, formed in place as pytorch-optimizer forms it (6 passes, not 10):
        ``nu += lambda g^2``, ``s += lambda g``, ``z = x0 - s / (cbrt(nu) + eps)``,
        ``x <- x + c (z - x)``."""
        mom = ctx.group["momentum"]
        lams = [_scalar(ctx.group["lr"]) * math.sqrt(t) for t in ctx.steps]
        if mom == 0 or any(lam != lams[0] for lam in lams):
            torch._foreach_add_(params, self.update(updates, state, params, ctx))
            return
        eps = ctx.group["eps"]
        s, nu, x0 = state["grad_sum"], state["grad_sum_sq"], state["x0"]
        fresh = [i for i, b in enumerate(x0) if b.numel() == 0 and params[i].numel() > 0]
        if fresh:  # x0 = p + s / rms, which is p on the first step (allocation only)
            ratio = self._ratio([s[i] for i in fresh], [nu[i] for i in fresh], eps)
            for i, r in zip(fresh, ratio):
                x0[i].resize_as_(params[i]).copy_(params[i]).add_(r)
        lam = ctx.loop_scalar(lams[0])
        torch._foreach_addcmul_(nu, updates, updates, lam)
        torch._foreach_add_(s, updates, alpha=lam)
        rms = cube_root(nu)
        torch._foreach_add_(rms, eps)
        z = torch._foreach_addcdiv(x0, s, rms, -1.0)
        torch._foreach_lerp_(params, z, 1.0 - mom)
