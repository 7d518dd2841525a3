"""AdEMAMix: Adam with a mixture of a fast and a slow EMA of the gradient."""

from __future__ import annotations

import math

import torch

from gradkit.core.hyperparams import betas, interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList
from gradkit.transforms._unitwise import positive_int
from gradkit.transforms.moments import _adam_denominator

__all__ = ["ScaleByAdEMAMix", "alpha_schedule", "beta3_schedule"]


def alpha_schedule(step: int, alpha: float, warmup: int | None) -> float:
    """``alpha(t) = min(t * alpha / T_alpha, alpha)`` (``alpha`` when ``warmup`` is None)."""
    if warmup is None:
        return alpha
    return min(step * alpha / warmup, alpha)


def beta3_schedule(step: int, beta1: float, beta3: float, warmup: int | None) -> float:
    """The paper's beta3 scheduler, linear in the half-life ``ln(1/2) / ln(beta)``.

    ``beta3(t) = min(exp(ln b1 ln b3 / ((1 - t/T) ln b3 + (t/T) ln b1)), b3)``, ``b3`` when
    ``warmup`` is None; it starts at ``b1`` and reaches ``b3`` at ``t = T``.
    """
    if warmup is None or beta3 == 0.0 or beta1 == 0.0:
        return beta3
    frac = step / warmup
    log1, log3 = math.log(beta1), math.log(beta3)
    return min(math.exp(log1 * log3 / ((1.0 - frac) * log3 + frac * log1)), beta3)


class ScaleByAdEMAMix(GradientTransformation):
    """AdEMAMix's direction.

    ``m1 <- b1 m1 + (1 - b1) g``; ``m2 <- b3(t) m2 + (1 - b3(t)) g``; ``v <- b2 v + (1 - b2) g^2``;
    output ``(m1 / (1 - b1^t) + alpha(t) m2) / (sqrt(v / (1 - b2^t)) + eps)``. The slow EMA
    ``m2`` is not bias-corrected. ``alpha(t)`` and ``b3(t)`` warm up over ``alpha_warmup`` and
    ``beta3_warmup`` steps (None: no warmup) with the schedulers of the paper
    (:func:`alpha_schedule`, :func:`beta3_schedule`); the group's step is used for them.

    Hyperparameters: ``betas`` (b1, b2, b3), ``alpha`` (>= 0), ``alpha_warmup``,
    ``beta3_warmup``, ``eps``. Three buffers of state.

    Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer: Better, Faster, Older",
    arXiv 2409.03137.
    """

    hyperparameters = (
        betas("betas", (0.9, 0.999, 0.9999)),
        interval("alpha", 5.0, 0.0),
        positive_int("alpha_warmup", None, allow_none=True),
        positive_int("beta3_warmup", None, allow_none=True),
        interval("eps", 1e-8, 0.0, low_open=True),
    )

    def init(self, params: TensorList) -> State:
        return {
            "exp_avg": [torch.zeros_like(p) for p in params],
            "exp_avg_slow": [torch.zeros_like(p) for p in params],
            "exp_avg_sq": [torch.zeros_like(p) for p in params],
        }

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        group = ctx.group
        beta1, beta2, beta3 = group["betas"]
        alpha = alpha_schedule(ctx.step, group["alpha"], group["alpha_warmup"])
        beta3_t = beta3_schedule(ctx.step, beta1, beta3, group["beta3_warmup"])
        m1, m2, v = state["exp_avg"], state["exp_avg_slow"], state["exp_avg_sq"]
        torch._foreach_lerp_(m1, updates, 1.0 - beta1)
        torch._foreach_lerp_(m2, updates, 1.0 - beta3_t)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, updates, updates, 1.0 - beta2)
        denom = _adam_denominator(
            v, ctx.per_step(lambda t: math.sqrt(1.0 - beta2**t)), group["eps"]
        )
        num = torch._foreach_div(m1, ctx.per_step(lambda t: 1.0 - beta1**t))
        torch._foreach_add_(num, m2, alpha=alpha)
        torch._foreach_div_(num, denom)
        return ctx.owned(num)
