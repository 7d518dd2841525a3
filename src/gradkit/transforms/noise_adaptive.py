"""Noise-adaptive layer-wise step sizes on top of a steepest-descent direction (LANTON-style)."""

from __future__ import annotations

import torch

from gradkit.core.hyperparams import choice, flag, interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList
from gradkit.transforms.lmo import NORMS, dual_norm, steepest_direction
from gradkit.transforms.orthogonalize import _NS_STEPS, CompileCache, compile_backend

__all__ = ["NoiseAdaptiveDirection"]


class NoiseAdaptiveDirection(GradientTransformation):
    """Momentum, a per-layer noise estimate in the dual norm, and the scaled LMO direction.

    For each tensor (layer) ``l`` of the group, with ``g`` its stochastic gradient and ``m`` its
    momentum before this step:

        H_l <- beta2 H_l + (1 - beta2) ||g - m||_*^2      (``||.||_*``: dual of ``norm``)
        m   <- mu m + (1 - mu) g                          (Nesterov look-ahead optional)
        out_l = sqrt((min_j H_j + delta) / (H_l + delta)) * d(m)

    ``d`` is the steepest direction under ``norm`` (:mod:`gradkit.transforms.lmo`), so the layer
    with the least gradient noise in the group moves at the base rate and noisier layers move
    proportionally slower (factor in (0, 1]). ``m`` serves as the running mean of the gradient,
    so ``||g - m||_*`` estimates the deviation of the stochastic gradient from its mean in the
    geometry the LMO uses. Hyperparameters: ``momentum``, ``nesterov``, ``beta2``
    (noise EMA, [0, 1)), ``noise_delta`` (> 0), ``norm``, ``ns_steps`` (spectral only).

    Complex parameters are refused. ``fused``: compile the spectral direction's iteration (None:
    on CUDA only).

    Hao, Gong, Xu, Wang & Liu, "Noise-Adaptive Layerwise Learning Rates: Accelerating
    Geometry-Aware Optimization for Deep Neural Network Training", arXiv 2510.14009.
    """

    flat_ok = False
    complex_ok = False
    hyperparameters = (
        interval("momentum", 0.95, 0.0, 1.0, high_open=True),
        flag("nesterov", False),
        interval("beta2", 0.99, 0.0, 1.0, high_open=True),
        interval("noise_delta", 1e-12, 0.0, low_open=True),
        choice("norm", "spectral", NORMS),
        _NS_STEPS,
    )

    def __init__(self, *, fused: bool | None = None) -> None:
        self.fused = fused
        self.cache = CompileCache()

    def init(self, params: TensorList) -> State:
        return {
            "momentum_buffer": [torch.zeros_like(p) for p in params],
            "noise": [torch.zeros((), dtype=torch.float32, device=p.device) for p in params],
        }

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        g = ctx.group
        mu, beta2, norm = g["momentum"], g["beta2"], g["norm"]
        bufs, noise = state["momentum_buffer"], state["noise"]
        dev = torch._foreach_sub(updates, bufs)
        dn = torch.stack([dual_norm(d, norm).float() for d in dev])  # one norm per layer
        torch._foreach_mul_(noise, beta2)
        torch._foreach_add_(noise, list((1 - beta2) * dn.square()), alpha=1.0)
        torch._foreach_lerp_(bufs, updates, 1.0 - mu)
        if g["nesterov"]:
            src = torch._foreach_mul(updates, 1.0 - mu)
            torch._foreach_add_(src, bufs, alpha=mu)
        else:
            src = bufs
        out = steepest_direction(
            src, norm, ns_steps=int(g["ns_steps"]), fused=self.fused, cache=self.cache,
            backend=compile_backend(ctx),
        )  # fmt: skip
        h = torch.stack(noise)
        delta = float(g["noise_delta"])
        factors = ((h.min() + delta) / (h + delta)).sqrt()
        torch._foreach_mul_(out, [f.to(o.dtype) for f, o in zip(factors.unbind(), out)])
        return ctx.owned(out)
