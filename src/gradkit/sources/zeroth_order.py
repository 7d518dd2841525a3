"""Zeroth-order gradients: two-point randomized smoothing with directions uniform on the sphere.

Lin, Zheng, Jordan, "Gradient-Free Methods for Deterministic and Stochastic Nonsmooth Nonconvex
Optimization", 2022, arXiv 2209.05045 (the estimator); Chen, Xu, Luo, "Faster Gradient-Free
Algorithms for Nonsmooth Nonconvex Stochastic Optimization", 2023, arXiv 2301.06428 (the same
estimator inside a variance-reduced recursion, which is not implemented here).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from gradkit.sources._base import (
    Cost,
    GradientSource,
    LossFn,
    _Tally,
    check_positive_float,
    check_positive_int,
    sample_like,
    split_batch,
    trainable,
    write_grads,
)

__all__ = ["ZerothOrder"]


class ZerothOrder(GradientSource):
    """Two-point zeroth-order estimate of the gradient of the uniformly smoothed loss.

    With ``d`` the number of trainable scalars and ``w`` uniform on the unit sphere of ``R^d``
    (all parameters together, drawn as ``z / ||z||`` with ``z ~ N(0, I)``)::

        g = d / (2 delta) * (L(theta + delta w) - L(theta - delta w)) * w

    averaged over ``directions`` independent draws. ``g`` is an unbiased estimate of
    ``grad L_delta(theta)``, the gradient of the smoothed loss
    ``L_delta(theta) = E_{u ~ Uniform(unit ball)} L(theta + delta u)``, which exists for any
    Lipschitz ``L`` (nonsmooth, nonconvex) — the estimator of Lin, Zheng, Jordan, "Gradient-Free
    Methods for Deterministic and Stochastic Nonsmooth Nonconvex Optimization", 2022,
    arXiv 2209.05045, also used by Chen, Xu, Luo, "Faster Gradient-Free Algorithms for
    Nonsmooth Nonconvex Stochastic Optimization", 2023, arXiv 2301.06428 (whose recursive
    variance-reduced estimator is not implemented here).

    Args:
        delta: smoothing radius (> 0).
        directions: directions averaged per call (>= 1).
        vectorized: evaluate all ``2 K`` probes at once with ``torch.func.vmap``; ``False``
            perturbs the parameters in place, one probe at a time (they are restored exactly).
        generator: ``torch.Generator`` for the directions, on the parameters' device; ``None``
            uses the global generator.

    Cost per call: ``2 K`` forwards, no backward. The loss returned is the mean of the probed
    values ``(L(theta + delta w) + L(theta - delta w)) / 2``, not ``L(theta)`` (which would cost
    one more forward).

    >>> import torch
    >>> from torch import nn
    >>> from gradkit.sources import ZerothOrder
    >>> torch.manual_seed(0) and None
    >>> model = nn.Linear(3, 1)
    >>> x, y = torch.randn(16, 3), torch.randn(16, 1)
    >>> source = ZerothOrder(delta=1e-3, directions=8, generator=torch.Generator().manual_seed(0))
    >>> loss = source.compute(model, nn.functional.mse_loss, (x, y))
    >>> source.last_cost.forward, model.bias.grad.shape
    (16, torch.Size([1]))
    """

    name = "zeroth_order"

    def __init__(
        self,
        delta: float = 1e-3,
        directions: int = 1,
        *,
        vectorized: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.delta = check_positive_float("delta", delta)
        self.directions = check_positive_int("directions", directions)
        self.vectorized = bool(vectorized)
        self.generator = generator

    def __repr__(self) -> str:
        return (
            f"ZerothOrder(delta={self.delta}, directions={self.directions}, "
            f"vectorized={self.vectorized})"
        )

    def _directions(self, params: list[Tensor], k: int) -> list[Tensor]:
        z = sample_like(params, self.generator, (k,))
        sq = sum(t.reshape(k, -1).pow(2).sum(1) for t in z)
        inv = sq.rsqrt()
        return [t * inv.reshape((k,) + (1,) * (t.dim() - 1)) for t in z]

    def _probes(
        self, model: nn.Module, loss_fn: LossFn, batch: Any, k: int, vectorized: bool
    ) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
        """``k`` directions ``w`` and the losses at ``theta +- delta w``."""
        inputs, targets = split_batch(batch)
        named = trainable(model)
        params = [p for _, p in named]
        delta = self.delta
        w = self._directions(params, k)
        if vectorized:
            names = [n for n, _ in named]
            fixed = {n: t for n, t in model.named_parameters() if not t.requires_grad}
            fixed.update(dict(model.named_buffers()))

            def loss_at(*ps: Tensor) -> Tensor:
                state = {**fixed, **dict(zip(names, ps))}
                return loss_fn(functional_call(model, state, (inputs,)), targets)

            plus = vmap(loss_at)(*[p + delta * t for p, t in zip(params, w)])
            minus = vmap(loss_at)(*[p - delta * t for p, t in zip(params, w)])
            return plus.reshape(-1), minus.reshape(-1), w, params
        saved = [p.detach().clone() for p in params]
        plus_l, minus_l = [], []
        try:
            for i in range(k):
                for p, s, t in zip(params, saved, w):
                    p.copy_(s + delta * t[i])
                plus_l.append(loss_fn(model(inputs), targets).detach())
                for p, s, t in zip(params, saved, w):
                    p.copy_(s - delta * t[i])
                minus_l.append(loss_fn(model(inputs), targets).detach())
        finally:
            for p, s in zip(params, saved):
                p.copy_(s)
        return torch.stack(plus_l), torch.stack(minus_l), w, params

    def estimates(self, model: nn.Module, loss_fn: LossFn, batch: Any, n: int) -> Tensor:
        """``n`` independent one-direction estimates as rows of an ``(n, d)`` tensor (the
        parameters flattened and concatenated in ``named_parameters`` order), all probes at
        once with ``vmap``; for studying the estimator. Does not touch ``.grad``; adds
        ``2 n`` forwards to ``cost``."""
        n = check_positive_int("n", n)
        with torch.no_grad():
            plus, minus, w, params = self._probes(model, loss_fn, batch, n, True)
            d = sum(p.numel() for p in params)
            flat = torch.cat([t.reshape(n, -1) for t in w], dim=1)
            out = ((plus - minus) * (d / (2.0 * self.delta))).unsqueeze(1).to(flat.dtype) * flat
        self.cost = self.cost + Cost(forward=2 * n, calls=1)
        return out

    def _compute(
        self, model: nn.Module, loss_fn: LossFn, batch: Any, accumulate: bool
    ) -> tuple[Tensor, _Tally]:
        k = self.directions
        with torch.no_grad():
            plus, minus, w, params = self._probes(model, loss_fn, batch, k, self.vectorized)
            d = sum(p.numel() for p in params)
            coef = (plus - minus) * (d / (2.0 * self.delta))
            grads = [(coef.reshape((k,) + (1,) * (t.dim() - 1)).to(t.dtype) * t).mean(0) for t in w]
            loss = (plus + minus).mean() / 2
        write_grads(params, grads, accumulate)
        return loss, _Tally(forward=2 * k)
