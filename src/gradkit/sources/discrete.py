"""Surrogate gradients through discrete units, as autograd functions.

- :func:`straight_through` and :func:`reinmax`: a one-hot sample ``D ~ Categorical(softmax(
  logits))`` in the forward pass, a surrogate gradient for the logits in the backward pass
  (binary variables are categorical with two logits, e.g. ``(l, 0)`` for ``sigmoid(l)``).
  Liu, Dong, Liu, Yu, Gao, "Bridging Discrete and Backpropagation: Straight-Through and
  Beyond", 2023, arXiv 2304.08612.
- :func:`straight_through_sign` and :func:`reste_sign`: deterministic binarization
  ``sign(x)`` with the clipped-identity gradient, or ReSTE's power-function gradient.
  Wu, Zheng, Liu, Zheng, "Estimator Meets Equilibrium Perspective: A Rectified Straight
  Through Estimator for Binary Neural Networks Training", 2023, arXiv 2308.06689.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradkit.errors import invalid_value

__all__ = ["reinmax", "reste_sign", "straight_through", "straight_through_sign"]


def _softmax_vjp(pi: Tensor, grad: Tensor) -> Tensor:
    """``J(pi)^T grad`` with ``J(pi) = diag(pi) - pi pi^T``, along the last dimension."""
    return pi * grad - pi * (pi * grad).sum(-1, keepdim=True)


def _one_hot_sample(
    logits: Tensor, sample: Tensor | None, generator: torch.Generator | None
) -> Tensor:
    if sample is None:
        probs = logits.detach().softmax(-1).reshape(-1, logits.shape[-1])
        index = torch.multinomial(probs, 1, replacement=True, generator=generator)
        index = index.reshape(logits.shape[:-1])
    else:
        index = torch.as_tensor(sample, device=logits.device)
        if index.shape != logits.shape[:-1] or index.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                "Invalid sample: an integer index tensor of shape logits.shape[:-1] = "
                f"{tuple(logits.shape[:-1])}; got {tuple(index.shape)} {index.dtype}"
            )
    return torch.nn.functional.one_hot(index.long(), logits.shape[-1]).to(logits.dtype)


def _check_tau(tau: float) -> float:
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau > 0:
        raise invalid_value("tau", tau, "a number > 0")
    return float(tau)


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: Tensor, one_hot: Tensor, tau: float) -> Tensor:
        ctx.save_for_backward((logits / tau).softmax(-1))
        ctx.tau = tau
        return one_hot

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (pi_tau,) = ctx.saved_tensors
        return _softmax_vjp(pi_tau, grad) / ctx.tau, None, None


class _ReinMax(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: Tensor, one_hot: Tensor, tau: float) -> Tensor:
        pi0 = logits.softmax(-1)
        pi1 = 0.5 * ((logits / tau).softmax(-1) + one_hot)
        ctx.save_for_backward(pi0, pi1)
        return one_hot

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        pi0, pi1 = ctx.saved_tensors
        return 2.0 * _softmax_vjp(pi1, grad) - 0.5 * _softmax_vjp(pi0, grad), None, None


def straight_through(
    logits: Tensor,
    tau: float = 1.0,
    *,
    sample: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Straight-through (ST): forward a one-hot sample, backward as if it were the softmax.

    Forward: ``D = onehot(i)``, ``i ~ Categorical(softmax(logits))`` along the last dimension.
    Backward: ``d/dlogits = J(softmax(logits / tau))^T dL/dD`` (``J`` the softmax Jacobian,
    divided by ``tau``), i.e. ``D`` is treated as ``softmax(logits / tau)``. Its expectation is
    a first-order approximation of ``d E[L(D)] / d logits`` (Liu, Dong, Liu, Yu, Gao, "Bridging
    Discrete and Backpropagation: Straight-Through and Beyond", 2023, arXiv 2304.08612).

    ``sample``: an integer index tensor of shape ``logits.shape[:-1]`` to use instead of
    drawing (for enumerating the exact expectation); ``generator`` (on the logits' device)
    for the draw.

    >>> import torch
    >>> from gradkit.sources import straight_through
    >>> logits = torch.zeros(3, requires_grad=True)
    >>> d = straight_through(logits, sample=torch.tensor(1))
    >>> d.tolist()
    [0.0, 1.0, 0.0]
    >>> (d * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    >>> [round(v, 4) for v in logits.grad.tolist()]  # J(1/3)^T (1, 2, 3)
    [-0.3333, 0.0, 0.3333]
    """
    tau = _check_tau(tau)
    return _StraightThrough.apply(logits, _one_hot_sample(logits, sample, generator), tau)


def reinmax(
    logits: Tensor,
    tau: float = 1.0,
    *,
    sample: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """ReinMax: a one-hot sample forward, a second-order (Heun) surrogate gradient backward.

    Forward: ``D = onehot(i)``, ``i ~ Categorical(pi0)``, ``pi0 = softmax(logits)``.
    Backward, with ``pi1 = (softmax(logits / tau) + D) / 2`` and ``J(p) = diag(p) - p p^T``::

        d/dlogits = 2 J(pi1)^T dL/dD  -  1/2 J(pi0)^T dL/dD

    Liu, Dong, Liu, Yu, Gao, "Bridging Discrete and Backpropagation: Straight-Through and
    Beyond", 2023, arXiv 2304.08612: ST is the forward-Euler (first-order) approximation of
    ``d E[L(D)] / d logits``; ReinMax integrates with Heun's method and is exact in expectation
    when ``L`` is a quadratic function of ``D`` (checked by enumeration in gradkit's tests).
    The paper recommends ``tau >= 1``; here any ``tau > 0`` is accepted. Where ``tau`` enters
    (only ``pi1``) follows the authors' released implementation.

    >>> import torch
    >>> from gradkit.sources import reinmax
    >>> logits = torch.zeros(2, requires_grad=True)
    >>> d = reinmax(logits, sample=torch.tensor(0))
    >>> (d * torch.tensor([1.0, -1.0])).sum().backward()
    >>> logits.grad.tolist()  # 2 J((.75, .25)) (1, -1) - 1/2 J((.5, .5)) (1, -1)
    [0.5, -0.5]
    """
    tau = _check_tau(tau)
    return _ReinMax.apply(logits, _one_hot_sample(logits, sample, generator), tau)


class _SignST(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, clip: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.clip = clip
        return torch.sign(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= ctx.clip).to(grad.dtype), None


def straight_through_sign(x: Tensor, clip: float = 1.0) -> Tensor:
    """``sign(x)`` forward; gradient ``1`` where ``|x| <= clip`` and ``0`` elsewhere.

    The clipped straight-through estimator of BinaryConnect/BNNs (the baseline ReSTE revises).

    >>> import torch
    >>> x = torch.tensor([-2.0, -0.5, 0.3], requires_grad=True)
    >>> straight_through_sign(x).sum().backward()
    >>> x.grad.tolist()
    [0.0, 1.0, 1.0]
    """
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0:
        raise invalid_value("clip", clip, "a number > 0")
    return _SignST.apply(x, float(clip))


def reste_derivative(x: Tensor, o: float, t: float, m: float) -> Tensor:
    """ReSTE's backward factor ``d/dx`` of its surrogate, elementwise (see :func:`reste_sign`)."""
    a = x.abs()
    power = (1.0 / o) * a.clamp_min(m).pow((1.0 - o) / o)
    near_zero = torch.full_like(a, m ** (1.0 / o) / m)
    out = torch.where(a <= m, near_zero, power)
    return torch.where(a <= t, out, torch.zeros_like(out))


class _ReSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, o: float, t: float, m: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.params = (o, t, m)
        return torch.sign(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        (x,) = ctx.saved_tensors
        return grad * reste_derivative(x, *ctx.params).to(grad.dtype), None, None, None


def reste_sign(x: Tensor, o: float = 1.0, t: float = 1.5, m: float = 0.1) -> Tensor:
    """``sign(x)`` forward; ReSTE's rectified power-function gradient backward.

    The surrogate is ``f_o(x) = sign(x) |x|^(1/o)`` (``o >= 1``; ``o = 1`` is the identity,
    larger ``o`` is closer to ``sign``). Backward factor::

        (1/o) |x|^((1-o)/o)     for m < |x| <= t
        f_o(m) / m = m^(1/o-1)  for |x| <= m     (the secant, as the gradient is infinite at 0)
        0                       for |x| > t

    Wu, Zheng, Liu, Zheng, "Estimator Meets Equilibrium Perspective: A Rectified Straight
    Through Estimator for Binary Neural Networks Training", 2023, arXiv 2308.06689. The paper
    raises ``o`` from 1 during training (a schedule left to the caller). Defaults ``t = 1.5``,
    ``m = 0.1`` and the secant near zero follow the authors' released code.

    >>> import torch
    >>> x = torch.tensor([-2.0, 0.05, 1.0], requires_grad=True)
    >>> reste_sign(x, o=2.0).sum().backward()
    >>> [round(v, 4) for v in x.grad.tolist()]  # 0 beyond t, sqrt(.1)/.1 near 0, 1/2 at 1
    [0.0, 3.1623, 0.5]
    """
    if isinstance(o, bool) or not isinstance(o, (int, float)) or not o >= 1:
        raise invalid_value("o", o, "a number >= 1")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
        raise invalid_value("t", t, "a number > 0")
    if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m < t:
        raise invalid_value("m", m, "a number in (0, t)")
    return _ReSTE.apply(x, float(o), float(t), float(m))
