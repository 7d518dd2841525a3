"""Forward gradients (Baydin et al., arXiv 2202.08587): the rule written out, unbiasedness and
the closed-form variance on a quadratic, and use with optimizers and closures."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradkit.sources import Backprop, ForwardGradient

from .problems import Params, median_of_means_bound, quadratic, quadratic_loss

GROUPS = 100  # median-of-means groups: failure probability exp(-100/8) < 4e-6 per coordinate


def _mlp_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(10, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (10,))
    return model, nn.functional.cross_entropy, (x, y)


def _true_grads(model, loss_fn, batch):
    model.zero_grad()
    loss_fn(model(batch[0]), batch[1]).backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("vectorized", [False, True])
@pytest.mark.parametrize("k", [1, 3])
def test_equals_rule_written_out(vectorized: bool, k: int) -> None:
    """g = (1/K) sum_k (grad L . v_k) v_k, with grad L from backprop and the same draws."""
    model, loss_fn, batch = _mlp_problem()
    true = _true_grads(model, loss_fn, batch)
    params = list(model.parameters())
    source = ForwardGradient(k, vectorized=vectorized, generator=torch.Generator().manual_seed(5))
    loss = source.compute(model, loss_fn, batch)
    gen = torch.Generator().manual_seed(5)
    if vectorized:
        vs = [torch.randn((k, *p.shape), generator=gen, dtype=p.dtype) for p in params]
        directions = [[v[i] for v in vs] for i in range(k)]
    else:
        directions = [
            [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params] for _ in range(k)
        ]
    expected = [torch.zeros_like(p) for p in params]
    for v in directions:
        dot = sum((g * t).sum() for g, t in zip(true, v))
        for e, t in zip(expected, v):
            e += dot * t / k
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss, loss_fn(model(batch[0]), batch[1]).detach())
    assert (source.last_cost.jvp, source.last_cost.forward, source.last_cost.backward) == (k, k, 0)


def _quadratic_estimates(n: int, scale: float = 1.0):
    a, c, theta = quadratic()
    model = Params(theta)
    source = ForwardGradient(generator=torch.Generator().manual_seed(11))
    est = source.estimates(model, quadratic_loss(a, c), (None, None), n) * scale
    return est, a @ theta + c


def _mean_check(est, g):
    """Per coordinate: |median-of-means - g_i| <= 2 sigma_i / sqrt(m), sigma_i^2 = ||g||^2 + g_i^2
    (Isserlis). Failure probability <= 7 exp(-100/8) < 3e-5 for a correct estimator."""
    m = est.shape[0] // GROUPS
    mom, p_fail = median_of_means_bound(est, GROUPS)
    sigma = (g.dot(g) + g * g).sqrt()
    return (mom - g).abs() <= 2 * sigma / math.sqrt(m), p_fail


def test_unbiased_on_quadratic() -> None:
    est, g = _quadratic_estimates(200_000)
    ok, p_fail = _mean_check(est, g)
    assert p_fail < 4e-6
    assert ok.all(), "mean of forward gradients differs from the gradient beyond the bound"
    # The check has power: a 10% scale error (or the unscaled sphere rule) is rejected.
    assert not _mean_check(est * 0.9, g)[0].all()


def test_variance_matches_closed_form_on_quadratic() -> None:
    """Var(g_i) = ||g||^2 + g_i^2. The check runs median-of-means on Y = (g^_i - g_i)^2, whose
    variance is exact in closed form: with c = g_i/||g||, r^2 = 1 - c^2,
    E[(g^_i - g_i)^4] = ||g||^4 (60 c^4 + 60 c^2 r^2 + 9 r^4) (Gaussian moments 1, 3, 15, 105).
    Failure probability <= 7 exp(-100/8) < 3e-5."""
    est, g = _quadratic_estimates(200_000)
    y = (est - g) ** 2
    norm2 = g.dot(g)
    cos2 = g * g / norm2
    sin2 = 1 - cos2
    var = norm2 * (1 + cos2)
    fourth = norm2**2 * (60 * cos2**2 + 60 * cos2 * sin2 + 9 * sin2**2)
    m = y.shape[0] // GROUPS
    mom, _ = median_of_means_bound(y, GROUPS)
    tol = 2 * (fourth - var**2).sqrt() / math.sqrt(m)
    assert ((mom - var).abs() <= tol).all(), (mom / var, tol / var)
    # power: a variance 25% off is rejected
    assert not ((mom - 0.75 * var).abs() <= tol).all()


def test_directions_average_reduces_variance() -> None:
    """K directions: the vectorized K-average has total variance (d+1)||g||^2 / K (checked
    loosely: within 25% over 400 draws)."""
    a, c, theta = quadratic()
    model = Params(theta)
    g = a @ theta + c
    source = ForwardGradient(16, vectorized=True, generator=torch.Generator().manual_seed(3))
    draws = []
    for _ in range(400):
        source.compute(model, quadratic_loss(a, c), (None, None))
        draws.append(torch.cat([model.a.grad.reshape(-1), model.b.grad]))
    total = ((torch.stack(draws) - g) ** 2).sum(1).mean()
    expected = (g.numel() + 1) * g.dot(g) / 16
    assert 0.75 < float(total / expected) < 1.25


def test_steps_any_optimizer_and_sam_closure() -> None:
    from gradkit.optim.sam import SAM

    torch.manual_seed(1)
    model = nn.Linear(6, 1).double()
    x = torch.randn(64, 6, dtype=torch.float64)
    y = x @ torch.randn(6, 1, dtype=torch.float64)
    loss_fn = nn.functional.mse_loss
    start = loss_fn(model(x), y).item()
    source = ForwardGradient(4, generator=torch.Generator().manual_seed(0))
    opt = SAM(model.parameters(), "sgd", rho=0.01, lr=0.05)
    closure = source.closure(model, loss_fn, (x, y))
    for _ in range(150):
        opt.step(closure)
    assert loss_fn(model(x), y).item() < 0.2 * start
    assert source.cost.calls == 300  # SAM evaluates the closure twice per step
    assert source.cost.jvp == 1200 and source.cost.backward == 0


def test_backprop_source_matches_autograd_and_accumulates() -> None:
    model, loss_fn, batch = _mlp_problem()
    true = _true_grads(model, loss_fn, batch)
    source = Backprop()
    source.compute(model, loss_fn, batch)
    for p, t in zip(model.parameters(), true):
        torch.testing.assert_close(p.grad, t)
    source.compute(model, loss_fn, batch, accumulate=True)
    for p, t in zip(model.parameters(), true):
        torch.testing.assert_close(p.grad, 2 * t)
    assert source.cost.forward == 2 and source.cost.backward == 2
    assert source.cost.peak_memory_bytes is None  # CPU: not measured


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="directions"):
        ForwardGradient(0)
    with pytest.raises(ValueError, match="batch"):
        ForwardGradient().compute(nn.Linear(2, 1), nn.functional.mse_loss, torch.zeros(3, 2))


def test_gradkit_optimizer_steps_unchanged() -> None:
    """A registered gradkit optimizer (Adam) driven by forward gradients reduces the loss."""
    from gradkit.optim import create_optimizer

    model, loss_fn, batch = _mlp_problem()
    start = loss_fn(model(batch[0]), batch[1]).item()
    opt = create_optimizer(model.parameters(), "adam", lr=0.01)
    source = ForwardGradient(8, vectorized=True, generator=torch.Generator().manual_seed(2))
    for _ in range(100):
        source.compute(model, loss_fn, batch)
        opt.step()
    assert loss_fn(model(batch[0]), batch[1]).item() < 0.8 * start
