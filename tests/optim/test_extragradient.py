"""Extra-gradient and optimistic GD: the bilinear game, the update rules written out, and optax."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from gradkit.optim.extragradient import ExtraGradient, OptimisticGD
from gradkit.optim.sgd import SGD
from helpers import single_threaded_tests  # noqa: F401  (autouse: one intra-op thread)


def _game(dtype=torch.float64, n=5, seed=0):
    """min_x max_y x^T A y with the singular values of A in [0.5, 1.5]; solution x = y = 0."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    a = u @ torch.diag(torch.linspace(0.5, 1.5, n, dtype=torch.float64)) @ v.T
    x0 = torch.randn(n, generator=g, dtype=torch.float64)
    y0 = torch.randn(n, generator=g, dtype=torch.float64)
    return a.to(dtype), x0.to(dtype), y0.to(dtype)


def _play(opt_cls, steps, use_closure, f=None, dtype=torch.float64, **kw):
    a, x0, y0 = _game(dtype)
    x, y = nn.Parameter(x0.clone()), nn.Parameter(y0.clone())
    f = f or (lambda x, y: x @ a @ y)
    opt = opt_cls([{"params": [x]}, {"params": [y], "maximize": True}], **kw)

    def closure():
        opt.zero_grad()
        loss = f(x, y)
        loss.backward()
        return loss

    path = []
    for _ in range(steps):
        if use_closure:
            opt.step(closure)
        else:
            closure()
            opt.step()
        path.append(torch.cat([x.detach(), y.detach()]).clone())
    return torch.stack(path), torch.cat([x0, y0])


def test_bilinear_game_extragradient_and_optimistic_converge_where_gda_diverges():
    start = torch.cat(_game()[1:]).norm()
    gda, _ = _play(SGD, 400, use_closure=False, lr=0.3)
    eg, _ = _play(ExtraGradient, 400, use_closure=True, lr=0.3)
    ogd, _ = _play(OptimisticGD, 400, use_closure=False, lr=0.3)
    assert gda[-1].norm() > 5 * start  # simultaneous gradient descent-ascent spirals out
    assert eg[-1].norm() < 0.05 * start
    assert ogd[-1].norm() < 0.05 * start


def _nonlinear(x, y):
    a, _, _ = _game(x.dtype)
    return x @ a @ y + 0.1 * torch.tanh(x).sum() * torch.sin(y).sum() + 0.05 * (x**2).sum()


def _field(x, y):
    """V(x, y) = (grad_x f, -grad_y f)."""
    x = x.detach().requires_grad_(True)
    y = y.detach().requires_grad_(True)
    gx, gy = torch.autograd.grad(_nonlinear(x, y), (x, y))
    return gx, -gy


def test_extragradient_trajectory_matches_update_rule_float64():
    lr = 0.2
    path, z0 = _play(ExtraGradient, 150, use_closure=True, f=_nonlinear, lr=lr)
    n = z0.numel() // 2
    x, y = z0[:n], z0[n:]
    for t in range(150):
        vx, vy = _field(x, y)
        xh, yh = x - lr * vx, y - lr * vy  # extrapolation
        vx, vy = _field(xh, yh)
        x, y = x - lr * vx, y - lr * vy  # update from x_t
        assert torch.allclose(path[t], torch.cat([x, y]), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 1.0), (0.5, 2.0)])
def test_optimistic_trajectory_matches_update_rule_float64(alpha, beta):
    lr = 0.2
    path, z0 = _play(OptimisticGD, 150, False, f=_nonlinear, lr=lr, og_alpha=alpha, og_beta=beta)
    n = z0.numel() // 2
    x, y = z0[:n], z0[n:]
    prev = None
    for t in range(150):
        v = torch.cat(_field(x, y))
        prev = v if prev is None else prev
        z = torch.cat([x, y]) - lr * ((alpha + beta) * v - beta * prev)
        prev = v
        x, y = z[:n], z[n:]
        assert torch.allclose(path[t], z, rtol=1e-12, atol=1e-13)


def test_optimistic_matches_optax_float32():
    jnp = pytest.importorskip("jax.numpy")
    optax = pytest.importorskip("optax")
    path, _ = _play(OptimisticGD, 200, use_closure=False, dtype=torch.float32, lr=0.3)
    a, x0, y0 = (t.numpy() for t in _game(torch.float32))
    solver = optax.optimistic_gradient_descent(learning_rate=0.3)
    params = (jnp.asarray(x0), jnp.asarray(y0))
    state = solver.init(params)
    a = jnp.asarray(a)
    for t in range(200):
        x, y = params
        field = (a @ y, -(a.T @ x))  # min over x, max over y
        updates, state = solver.update(field, state, params)
        params = optax.apply_updates(params, updates)
        ref = np.concatenate([np.asarray(params[0]), np.asarray(params[1])])
        np.testing.assert_allclose(path[t].numpy(), ref, rtol=1e-5, atol=1e-6)


def test_optimistic_state_dict_resume_is_exact():
    def make():
        torch.manual_seed(0)
        return nn.Parameter(torch.randn(6)), nn.Parameter(torch.randn(6))

    def run(x, y, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            (x @ y + 0.1 * (x**2).sum()).backward()
            opt.step()

    x, y = make()
    run(x, y, OptimisticGD([{"params": [x]}, {"params": [y], "maximize": True}], lr=0.1), 100)
    x1, y1 = make()
    opt1 = OptimisticGD([{"params": [x1]}, {"params": [y1], "maximize": True}], lr=0.1)
    run(x1, y1, opt1, 50)
    sd = copy.deepcopy(opt1.state_dict())
    x2, y2 = nn.Parameter(x1.detach().clone()), nn.Parameter(y1.detach().clone())
    opt2 = OptimisticGD([{"params": [x2]}, {"params": [y2], "maximize": True}], lr=0.1)
    opt2.load_state_dict(sd)
    run(x2, y2, opt2, 50)
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_extragradient_missing_closure_is_a_clear_error():
    opt = ExtraGradient([nn.Parameter(torch.zeros(2))])
    with pytest.raises(RuntimeError, match="ExtraGradient needs a closure.*extrapolated point"):
        opt.step()


def test_infinite_lr_is_refused():
    """inf is not among the generated invalid values (NaN and below the bound are)."""
    with pytest.raises(ValueError, match="lr must be >= 0"):
        OptimisticGD([nn.Parameter(torch.zeros(2))], lr=float("inf"))
