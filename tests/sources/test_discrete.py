"""Surrogate gradients through discrete units, checked by exact enumeration.

ST and ReinMax (Liu et al., arXiv 2304.08612): for D ~ Categorical(softmax(theta)) the exact
gradient d E[f(D)] / d theta = J(pi)^T (f(e_1), ..., f(e_n)) and each estimator's expectation
sum_j pi_j est(e_j) are enumerated (float64). What is tested, precisely:

- f linear in D: ST (tau = 1) and ReinMax are exact in expectation.
- f quadratic in D: ReinMax is exact in expectation (its Heun/trapezoid step is exact for
  quadratics), ST is not (first order).
- f(D) = h(s D) with h smooth and not polynomial: as s -> 0 the bias of ST scales as s^2 and the
  bias of ReinMax as s^3 (the exact gradient itself is O(s)), i.e. ST is a first-order and
  ReinMax a second-order approximation; log-log slopes between s = 0.05 and 0.025 are checked.

ReSTE (Wu et al., arXiv 2308.06689): the backward factor against its formula written out, and
its bias for a sign unit with uniform noise, where E[sign(x + u)] = x on |x| <= 1.
"""

from __future__ import annotations

import math

import pytest
import torch

from gradkit.sources import reinmax, reste_sign, straight_through, straight_through_sign

N = 4


def _problem(n: int = N):
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(n, generator=g, dtype=torch.float64)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64)
    w = torch.randn(n, generator=g, dtype=torch.float64)
    return theta, a, b, w


def _estimates(estimator, theta, f, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """All n per-sample estimates (rows) and their probabilities."""
    rows = []
    for j in range(theta.numel()):
        logits = theta.clone().requires_grad_(True)
        f(estimator(logits, sample=torch.tensor(j), **kw)).backward()
        rows.append(logits.grad)
    return torch.stack(rows), theta.softmax(-1)


def _bias(estimator, theta, f, **kw) -> torch.Tensor:
    rows, pi = _estimates(estimator, theta, f, **kw)
    return pi @ rows - _exact(theta, f)


def _exact(theta, f) -> torch.Tensor:
    n = theta.numel()
    values = torch.stack([f(torch.eye(n, dtype=theta.dtype)[i]) for i in range(n)]).detach()
    logits = theta.clone().requires_grad_(True)
    (logits.softmax(-1) * values).sum().backward()
    return logits.grad


@pytest.mark.parametrize("n", [2, N])
def test_linear_both_exact(n: int) -> None:
    theta, _, b, _ = _problem(n)
    for est in (straight_through, reinmax):
        assert _bias(est, theta, lambda d, b=b: b @ d).abs().max() < 1e-14


@pytest.mark.parametrize("n", [2, N])
def test_quadratic_reinmax_exact_st_biased(n: int) -> None:
    theta, a, b, _ = _problem(n)

    def f(d):
        return d @ a @ d + b @ d

    assert _bias(reinmax, theta, f).abs().max() < 1e-14
    assert _bias(straight_through, theta, f).norm() > 1e-2 * _exact(theta, f).norm()


def test_order_of_accuracy() -> None:
    theta, a, _, w = _problem()

    def h(u):
        return torch.sin(u @ w) + torch.exp(0.3 * u @ a @ u) + (u**3).sum()

    def biases(s):
        f = lambda d: h(s * d)  # noqa: E731
        return (_bias(straight_through, theta, f).norm(), _bias(reinmax, theta, f).norm())

    (st1, rm1), (st2, rm2) = biases(0.05), biases(0.025)
    slope_st = math.log2(st1 / st2)
    slope_rm = math.log2(rm1 / rm2)
    assert 1.8 < slope_st < 2.2, slope_st  # measured 1.96
    assert 2.8 < slope_rm < 3.2, slope_rm  # measured 3.00
    assert rm2 < 0.1 * st2


def test_sampling_follows_softmax() -> None:
    """Without ``sample``, D ~ Categorical(softmax(theta)): frequencies over 40k draws within
    5 binomial standard deviations, and the output is one-hot."""
    theta, *_ = _problem()
    logits = theta.expand(40_000, N)
    gen = torch.Generator().manual_seed(0)
    for est in (straight_through, reinmax):
        d = est(logits, generator=gen)
        assert torch.equal(d.sum(-1), torch.ones(40_000, dtype=d.dtype))
        pi = theta.softmax(-1)
        sd = (pi * (1 - pi) / 40_000).sqrt()
        assert ((d.mean(0) - pi).abs() < 5 * sd).all()


def test_temperature_enters_as_documented() -> None:
    """ST with tau: J(softmax(theta/tau))^T g / tau. ReinMax with tau: pi1 uses theta/tau."""
    theta, _, b, _ = _problem()
    tau = 2.0
    logits = theta.clone().requires_grad_(True)
    (b @ straight_through(logits, tau, sample=torch.tensor(1))).backward()
    p = (theta / tau).softmax(-1)
    torch.testing.assert_close(logits.grad, (p * b - p * (p @ b)) / tau)
    logits = theta.clone().requires_grad_(True)
    (b @ reinmax(logits, tau, sample=torch.tensor(2))).backward()
    p0 = theta.softmax(-1)
    p1 = ((theta / tau).softmax(-1) + torch.eye(N, dtype=theta.dtype)[2]) / 2
    expected = 2 * (p1 * b - p1 * (p1 @ b)) - 0.5 * (p0 * b - p0 * (p0 @ b))
    torch.testing.assert_close(logits.grad, expected)


def _reste_formula(x: float, o: float, t: float = 1.5, m: float = 0.1) -> float:
    a = abs(x)
    if a > t:
        return 0.0
    if a <= m:
        return m ** (1 / o) / m
    return (1 / o) * a ** ((1 - o) / o)


@pytest.mark.parametrize("o", [1.0, 2.0, 3.0])
def test_reste_backward_is_formula(o: float) -> None:
    xs = [-2.0, -1.5, -1.2, -0.7, -0.1, -0.03, 0.0, 0.05, 0.1, 0.11, 0.4, 1.0, 1.49, 1.6]
    x = torch.tensor(xs, dtype=torch.float64, requires_grad=True)
    out = reste_sign(x, o=o)
    assert torch.equal(out, torch.sign(x.detach()))
    out.backward(torch.ones_like(out))
    expected = torch.tensor([_reste_formula(v, o) for v in xs], dtype=torch.float64)
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=0)


def test_reste_o1_is_clipped_straight_through() -> None:
    x = torch.linspace(-2, 2, 81, dtype=torch.float64, requires_grad=True)
    reste_sign(x, o=1.0, t=1.0).sum().backward()
    g1 = x.grad.clone()
    x.grad = None
    straight_through_sign(x, clip=1.0).sum().backward()
    torch.testing.assert_close(g1, x.grad)


def test_sign_bias_under_uniform_noise() -> None:
    """b = sign(x + u), u ~ U[-1, 1]: E[c b] = c x on |x| <= 1, so the exact gradient is c.
    The clipped ST (evaluated at the noiseless x) is exact there; ReSTE is exact at o = 1 and its
    mean absolute bias over x in (-1, 1) grows with o (its trade-off: closer to sign, further
    from this gradient)."""
    x = torch.linspace(-0.99, 0.99, 199, dtype=torch.float64, requires_grad=True)
    straight_through_sign(x).sum().backward()
    assert (x.grad - 1).abs().max() == 0
    biases = []
    for o in (1.0, 1.5, 2.0, 3.0):
        x.grad = None
        reste_sign(x, o=o).sum().backward()
        biases.append((x.grad - 1).abs().mean().item())
    assert biases[0] == 0
    assert all(b1 < b2 for b1, b2 in zip(biases, biases[1:])), biases


def test_invalid_arguments() -> None:
    theta = torch.zeros(3)
    with pytest.raises(ValueError, match="tau"):
        reinmax(theta, 0.0)
    with pytest.raises(ValueError, match="sample"):
        straight_through(theta, sample=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="o"):
        reste_sign(theta, o=0.5)
    with pytest.raises(ValueError, match="clip"):
        straight_through_sign(theta, clip=-1)
