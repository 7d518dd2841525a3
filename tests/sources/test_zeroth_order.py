"""Zeroth-order two-point estimator (Lin, Zheng, Jordan, arXiv 2209.05045): against the smoothed
function's gradient where it has a closed form, with Bernstein bounds (the estimates are bounded
and their variance is known or bounded in closed form)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradkit.sources import ZerothOrder

from .problems import Params, quadratic, quadratic_loss

P_FAIL = 1e-6  # per coordinate, for a correct estimator (Bernstein)


def _bernstein(bound: torch.Tensor, var: torch.Tensor, n: int, p: float = P_FAIL) -> torch.Tensor:
    """t with P(|mean of n iid samples - expectation| >= t) <= p, for samples within ``bound``
    of their expectation and of variance at most ``var``: Bernstein's inequality
    2 exp(-n t^2 / (2 var + 2 bound t / 3)) <= p, solved for t."""
    log = math.log(2 / p)
    b = bound * log / (3 * n)
    return b + (b**2 + 2 * var * log / n).sqrt()


class Scalar(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.tensor([value], dtype=torch.float64))

    def forward(self, _inp: object) -> torch.Tensor:
        return self.x


@pytest.mark.parametrize("x", [0.3, -0.05, -0.5, 2.0])
def test_abs_1d_equals_smoothed_gradient(x: float) -> None:
    """In 1-D the sphere is {-1, +1}, so the estimate is deterministic: it must equal
    d/dx E_{u ~ U[-1, 1]} |x + delta u| = x / delta for |x| < delta, sign(x) otherwise."""
    delta = 0.5
    model = Scalar(x)
    source = ZerothOrder(delta, directions=3, generator=torch.Generator().manual_seed(0))
    source.compute(model, lambda out, _t: out.abs().sum(), (None, None))
    expected = x / delta if abs(x) < delta else math.copysign(1.0, x)
    assert model.x.grad.item() == pytest.approx(expected, abs=1e-12)
    assert model.x.item() == x  # parameters restored exactly


def test_quadratic_smoothed_gradient_is_gradient() -> None:
    """For L = 1/2 theta^T A theta + c^T theta, uniform-ball smoothing only adds
    delta^2 tr(A) / (2 (d + 2)), so grad L_delta = A theta + c = g, and the two-point difference
    is exact: each estimate is d (w . g) w. Its coordinates lie within d ||g|| + |g_i| of g_i and
    (sphere moments E[w_i w_j w_k w_l] = (3 terms) / (d (d + 2))) have variance
    d (||g||^2 + 2 g_i^2) / (d + 2) - g_i^2. 200k estimates, Bernstein at 1e-6 per coordinate."""
    a, c, theta = quadratic()
    g = a @ theta + c
    d = g.numel()
    source = ZerothOrder(delta=0.7, generator=torch.Generator().manual_seed(1))
    est = source.estimates(Params(theta), quadratic_loss(a, c), (None, None), 200_000)
    var = d * (g.dot(g) + 2 * g * g) / (d + 2) - g * g
    tol = _bernstein(d * g.norm() + g.abs(), var, est.shape[0])
    assert ((est.mean(0) - g).abs() <= tol).all(), ((est.mean(0) - g).abs(), tol)
    assert not ((0.95 * est.mean(0) - g).abs() <= tol).all()  # power: 5% off is rejected
    # the empirical variance is the closed form (loose check: 5%)
    torch.testing.assert_close(est.var(0), var, rtol=0.05, atol=0.0)


def test_abs_linear_3d_equals_smoothed_gradient() -> None:
    """L(x) = |a . x| in d = 3. With u uniform in the unit ball, t = a.u/||a|| has density
    3/4 (1 - t^2) on [-1, 1], so grad L_delta(x) = a (3 s - s^3) / 2 for s = a.x/(delta ||a||)
    in [-1, 1] (a sign(s) outside). Here s = 0.5: smoothed 0.6875 a, unsmoothed a.
    Estimate coordinates are bounded by d ||a|| (|L(x + dw) - L(x - dw)| <= 2 delta |a . w|) and
    their variance by d (||a||^2 + 2 a_i^2) / (d + 2); 200k estimates, Bernstein at 1e-6."""
    a = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    delta = 0.4
    s = 0.5
    x = a / a.norm() * (s * delta)
    model = nn.Module()
    model.x = nn.Parameter(x.clone())
    model.forward = lambda _inp: model.x

    source = ZerothOrder(delta, generator=torch.Generator().manual_seed(2))
    est = source.estimates(model, lambda out, _t: (a @ out).abs(), (None, None), 200_000)
    expected = a * (3 * s - s**3) / 2
    var_bound = 3 * (a.dot(a) + 2 * a * a) / 5
    tol = _bernstein(3 * a.norm() + expected.abs(), var_bound, est.shape[0])
    err = (est.mean(0) - expected).abs()
    assert (err <= tol).all(), (err, tol)
    assert not ((est.mean(0) - a).abs() <= tol).all()  # the unsmoothed gradient is rejected


@pytest.mark.parametrize("vectorized", [False, True])
def test_compute_is_mean_of_estimates(vectorized: bool) -> None:
    """compute() with K directions equals the mean of estimates() over the same draws, and the
    in-place (loop) and vmap paths agree."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    before = [p.detach().clone() for p in model.parameters()]
    src = ZerothOrder(1e-2, directions=6, vectorized=vectorized)
    src.generator = torch.Generator().manual_seed(9)
    src.compute(model, nn.functional.mse_loss, (x, y))
    got = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    ref = ZerothOrder(1e-2, generator=torch.Generator().manual_seed(9))
    est = ref.estimates(model, nn.functional.mse_loss, (x, y), 6)
    torch.testing.assert_close(got, est.mean(0), rtol=1e-9, atol=1e-9)
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p.detach(), b)
    assert (src.last_cost.forward, src.last_cost.backward, src.last_cost.jvp) == (12, 0, 0)


def test_trains_linear_regression() -> None:
    torch.manual_seed(3)
    model = nn.Linear(5, 1).double()
    x = torch.randn(64, 5, dtype=torch.float64)
    y = x @ torch.randn(5, 1, dtype=torch.float64)
    loss_fn = nn.functional.mse_loss
    start = loss_fn(model(x), y).item()
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    src = ZerothOrder(1e-3, directions=4, generator=torch.Generator().manual_seed(0))
    for _ in range(300):
        src.compute(model, loss_fn, (x, y))
        opt.step()
    assert loss_fn(model(x), y).item() < 0.1 * start


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="delta"):
        ZerothOrder(0.0)
    with pytest.raises(ValueError, match="directions"):
        ZerothOrder(directions=0)
