"""Moment transforms: heavy-ball / Nesterov momentum and Adam's bias-corrected moments."""

from __future__ import annotations

import math

import torch

from gradkit.core.hyperparams import betas, flag, interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList

__all__ = ["Momentum", "ScaleByAdam"]


def _adam_moment_buffers(params: TensorList) -> State:
    """Zeroed first and second moments, ``exp_avg`` and ``exp_avg_sq``, shaped like ``params``."""
    return {
        "exp_avg": [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params],
        "exp_avg_sq": [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params],
    }


def _update_adam_moments(
    state: State,
    updates: TensorList,
    beta1: float,
    beta2: float,
    *,
    of_momentum: bool = False,
) -> tuple[TensorList, TensorList]:
    """Adam's moment averages, in place: ``m <- b1 m + (1 - b1) u``, ``v <- b2 v + (1 - b2) s^2``.

    ``s`` is the update ``u``, or with ``of_momentum`` the new ``m`` (AdaMomentum). The moments
    are ``state["exp_avg"]`` and ``state["exp_avg_sq"]``; returns them as ``(m, v)``.
    """
    m, v = state["exp_avg"], state["exp_avg_sq"]
    torch._foreach_lerp_(m, updates, 1 - beta1)
    torch._foreach_mul_(v, beta2)
    s = m if of_momentum else updates
    torch._foreach_addcmul_(v, s, s, 1 - beta2)
    return m, v


def _adam_denominator(
    v: TensorList, bias_correction2_sqrt: float | list[float], eps: float
) -> TensorList:
    """Adam's denominator ``sqrt(v) / sqrt(1 - b2^t) + eps``, in a fresh list.

    ``bias_correction2_sqrt`` is ``sqrt(1 - b2^t)``: one number or one per tensor (as
    :meth:`~gradkit.core.transform.StepContext.per_step` gives it).
    """
    denom = torch._foreach_sqrt(v)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, eps)
    return denom


def _divide_into(numerator: TensorList, denom: TensorList) -> TensorList:
    """``numerator / denom`` per tensor; ``denom`` must be a fresh list the caller owns.

    Eagerly on a CPU the quotient is written into ``denom`` (one full-size allocation less per
    step: on a CPU a large temporary costs page faults whenever the allocator has handed its
    memory back to the kernel, which dominated Adam-type steps on large tensors; see
    docs/benchmarks.md). Elsewhere one ``_foreach_div``. Both give the same bits.
    """
    if denom and denom[0].device.type == "cpu" and not torch.compiler.is_compiling():
        for a, b in zip(numerator, denom):
            torch.div(a, b, out=b)
        return denom
    return torch._foreach_div(numerator, denom)


class Momentum(GradientTransformation):
    """Heavy-ball or Nesterov momentum, as torch.optim.SGD defines it.

    ``b <- mu * b + (1 - dampening) * u`` (on the first step ``b <- u``); the output is ``b``, or
    ``u + mu * b`` with ``nesterov=True``. Hyperparameters: ``momentum`` (mu, in [0, 1)),
    ``dampening`` and ``nesterov``. With ``momentum == 0`` it passes updates through and keeps no
    buffer.

    Polyak, "Some methods of speeding up the convergence of iteration methods" (1964); Sutskever et
    al., "On the importance of initialization and momentum in deep learning" (ICML 2013).
    """

    hyperparameters = (
        interval("momentum", 0.0, 0.0, 1.0, high_open=True),
        interval("dampening", 0.0, 0.0, 1.0),
        flag("nesterov", False),
    )

    def check_group(self, group) -> None:  # noqa: ANN001
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                "Invalid nesterov: True; Nesterov momentum requires momentum > 0 and dampening == 0"
            )

    def init(self, params: TensorList) -> State:
        # Zero-size placeholders: a buffer is only allocated when momentum is used.
        return {"momentum_buffer": [torch.empty(0, dtype=p.dtype, device=p.device) for p in params]}

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        mu = ctx.group["momentum"]
        if mu == 0:
            return updates
        bufs = state["momentum_buffer"]
        fresh = [i for i, b in enumerate(bufs) if b.numel() == 0 and updates[i].numel() > 0]
        for i in fresh:  # first use: b <- u (allocation, not the hot path)
            bufs[i].resize_as_(updates[i]).copy_(updates[i])
        seen = set(fresh)
        old = [i for i in range(len(bufs)) if i not in seen]
        if old:
            old_bufs = [bufs[i] for i in old]
            torch._foreach_mul_(old_bufs, mu)
            torch._foreach_add_(
                old_bufs, [updates[i] for i in old], alpha=1 - ctx.group["dampening"]
            )
        if ctx.group["nesterov"]:
            return ctx.owned(torch._foreach_add(updates, bufs, alpha=mu))
        return bufs  # not owned: later transforms copy before changing it


class ScaleByAdam(GradientTransformation):
    """Adam's bias-corrected moment ratio.

    ``m <- b1 m + (1 - b1) u``, ``v <- b2 v + (1 - b2) u^2``, output
    ``(m / (1 - b1^t)) / (sqrt(v) / sqrt(1 - b2^t) + eps)``. With ``amsgrad=True`` the
    denominator uses ``v_max <- max(v_max, v)`` (group hyperparameter ``amsgrad``) (Reddi et al., "On the Convergence of Adam and
    Beyond", ICLR 2018, ).

    Kingma & Ba, "Adam: A Method for Stochastic Optimization", arXiv 1412.6980.
    """

    hyperparameters = (
        betas("betas", (0.9, 0.999)),
        interval("eps", 1e-8, 0.0, low_open=True),
        flag("amsgrad", False),
    )

    def init(self, params: TensorList) -> State:
        return {
            **_adam_moment_buffers(params),
            # zero-size until a group turns amsgrad on: no memory cost otherwise
            "max_exp_avg_sq": [torch.empty(0, dtype=p.dtype, device=p.device) for p in params],
        }

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        m, denom, bc1 = self.update_as_ratio(updates, state, params, ctx)
        out = _divide_into(m, denom)
        torch._foreach_div_(out, bc1)
        return ctx.owned(out)

    def update_as_ratio(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> tuple[TensorList, TensorList, float | list[float]]:
        """The moments' update, unformed: ``(m, sqrt(v) / sqrt(1 - b2^t) + eps, 1 - b1^t)``,
        i.e. ``m / denom / (1 - b1^t)`` (the divisor one number, or one per tensor)."""
        beta1, beta2 = ctx.group["betas"]
        m, v = _update_adam_moments(state, updates, beta1, beta2)
        if ctx.group["amsgrad"]:
            vmax = state["max_exp_avg_sq"]
            for buf, cur in zip(vmax, v):
                if buf.numel() == 0 and cur.numel() > 0:  # first use: v_max <- 0, then max
                    buf.resize_as_(cur).zero_()
            torch._foreach_maximum_(vmax, v)
            v = vmax
        bc2_sqrt = ctx.per_step(lambda t: math.sqrt(1 - beta2**t))
        denom = _adam_denominator(v, bc2_sqrt, ctx.group["eps"])
        return m, denom, ctx.per_step(lambda t: 1 - beta1**t)
