"""Adam whose moments are reset to zero every ``reset_interval`` steps (SPAM / Stable-SPAM)."""

from __future__ import annotations

import math

import torch

from gradkit.core.hyperparams import betas, interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList
from gradkit.transforms._cosine import cosine_decay_factor
from gradkit.transforms._unitwise import positive_int
from gradkit.transforms.moments import (
    _adam_denominator,
    _adam_moment_buffers,
    _divide_into,
    _update_adam_moments,
)

__all__ = ["ScaleByAdamWithReset", "steps_since_reset"]


def steps_since_reset(step: int, interval_: int | None) -> int:
    """The step number Adam's bias correction uses: the reset step itself counts as 1."""
    if interval_ is None or step < interval_:
        return step
    return step % interval_ + 1


class ScaleByAdamWithReset(GradientTransformation):
    """Adam's bias-corrected ratio with periodic momentum reset.

    On every step ``t`` with ``t % reset_interval == 0`` both moments are set to zero and the
    bias-correction counter restarts (``tau = 1`` on that step). With ``b1_t = b1 * s_t``
    (``s_t`` the optional cosine decay to ``eta_min`` over ``t_max`` steps)::

        m <- b1_t m + (1 - b1_t) g;     v <- b2 v + (1 - b2) g^2
        out = (m / (1 - b1_t^tau)) / (sqrt(v / (1 - b2^tau)) + eps)

    Hyperparameters: ``betas``, ``eps``, ``reset_interval`` (integer >= 1, or None for never),
    ``t_max`` and ``eta_min``.

    Huang et al., "SPAM: Spike-Aware Adam with Momentum Reset", arXiv 2501.06842, and
    "Stable-SPAM", arXiv 2502.17055.
    """

    hyperparameters = (
        betas("betas", (0.9, 0.999)),
        interval("eps", 1e-8, 0.0, low_open=True),
        positive_int("reset_interval", 1000, allow_none=True),
        positive_int("t_max", None, allow_none=True),
        interval("eta_min", 0.5, 0.0, 1.0),
    )

    def init(self, params: TensorList) -> State:
        return _adam_moment_buffers(params)

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        group = ctx.group
        beta1, beta2 = group["betas"]
        beta1 = beta1 * cosine_decay_factor(ctx.step, group["t_max"], group["eta_min"])
        every = group["reset_interval"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        if every is not None:
            reset = [i for i, t in enumerate(ctx.steps) if t % every == 0]
            if reset:
                torch._foreach_zero_([m[i] for i in reset] + [v[i] for i in reset])
        taus = [steps_since_reset(t, every) for t in ctx.steps]
        _update_adam_moments(state, updates, beta1, beta2)
        denom = _adam_denominator(v, [math.sqrt(1.0 - beta2**tau) for tau in taus], group["eps"])
        out = _divide_into(m, denom)
        torch._foreach_div_(out, [1.0 - beta1**tau for tau in taus])
        return ctx.owned(out)
