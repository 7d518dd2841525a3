"""Finite-difference gradient regularization against its rule written out and against the exact
gradient of ``L + (gamma/2) ||grad L||^2`` by double backprop.

Exactness: the rule is replayed with ``torch.autograd.grad`` on the same float64 model, so
``1e-12`` relative after 30 steps. Convergence: the finite-difference error must be first order
in the step (halving it halves the error: ratio in (1.8, 2.2)), match the leading term
``(gamma eps / 2) D^3L[g, g]`` (itself by triple backprop) to 5%, and vanish on a quadratic loss.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import gradkit
from gradkit.optim.fd_grad_reg import FiniteDifferenceGR


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2)).double()


def _batch(seed: int):
    gen = torch.Generator().manual_seed(1000 + seed)
    return (
        torch.randn(16, 5, generator=gen, dtype=torch.float64),
        torch.randn(16, 2, generator=gen, dtype=torch.float64),
    )


def _loss(model, x, y):
    return nn.functional.mse_loss(model(x), y)


def _closure(opt, model, x, y):
    def closure():
        opt.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        return loss

    return closure


def _fd_direction_written_out(model, x, y, gamma, eps, scheme):
    params = list(model.parameters())
    g = torch.autograd.grad(_loss(model, x, y), params)
    s = 1.0 if scheme == "forward" else -1.0
    with torch.no_grad():
        for p, gi in zip(params, g):
            p.add_(s * eps * gi)
    g1 = torch.autograd.grad(_loss(model, x, y), params)
    with torch.no_grad():
        for p, gi in zip(params, g):
            p.sub_(s * eps * gi)
    return [a + s * gamma / eps * (b - a) for a, b in zip(g, g1)]


@pytest.mark.parametrize("scheme", ["forward", "backward"])
def test_trajectory_is_the_rule_written_out(scheme: str) -> None:
    model = _model(0)
    ref = copy.deepcopy(model)
    opt = FiniteDifferenceGR(
        model.parameters(), "sgd", gamma=0.05, fd_step=0.02, scheme=scheme, lr=0.1, momentum=0.9
    )
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for t in range(30):
        x, y = _batch(t)
        opt.step(_closure(opt, model, x, y))
        d = _fd_direction_written_out(ref, x, y, 0.05, 0.02, scheme)
        for p, di in zip(ref.parameters(), d):
            p.grad = di
        ref_opt.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def _exact_regularized_gradient(model, x, y, gamma):
    """grad of L + (gamma/2) ||grad L||^2 by double backprop."""
    params = list(model.parameters())
    g = torch.autograd.grad(_loss(model, x, y), params, create_graph=True)
    penalty = 0.5 * gamma * sum((gi * gi).sum() for gi in g)
    total = _loss(model, x, y) + penalty
    return torch.cat([t.reshape(-1) for t in torch.autograd.grad(total, params)])


def _third_order_term(model, x, y):
    """D^3L[g, g] = grad_w <g_const, H(w) g_const> with g fixed: by triple backprop."""
    params = list(model.parameters())
    g_const = [t.detach() for t in torch.autograd.grad(_loss(model, x, y), params)]
    g = torch.autograd.grad(_loss(model, x, y), params, create_graph=True)
    hg = torch.autograd.grad(
        sum((a * b).sum() for a, b in zip(g, g_const)), params, create_graph=True
    )
    quad = sum((a * b).sum() for a, b in zip(hg, g_const))
    return torch.cat([t.reshape(-1) for t in torch.autograd.grad(quad, params)])


def _one_direction(model, x, y, gamma, eps, scheme):
    opt = FiniteDifferenceGR(
        model.parameters(), "sgd", gamma=gamma, fd_step=eps, scheme=scheme, lr=0.0
    )
    opt.step(_closure(opt, model, x, y))
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("scheme", ["forward", "backward"])
def test_fd_gradient_tends_to_the_exact_one_at_first_order(scheme: str) -> None:
    model, (x, y), gamma = _model(1), _batch(0), 0.1
    exact = _exact_regularized_gradient(model, x, y, gamma)
    third = _third_order_term(model, x, y)
    s = 1.0 if scheme == "forward" else -1.0
    errors = []
    for eps in (4e-3, 2e-3, 1e-3, 5e-4):
        d = _one_direction(model, x, y, gamma, eps, scheme)
        errors.append(float((d - exact).norm()))
        # the leading error term: s (gamma eps / 2) D^3L[g, g]
        leading = s * gamma * eps / 2 * third
        assert float((d - exact - leading).norm()) < 0.05 * float(leading.norm())
    for a, b in zip(errors, errors[1:]):
        assert 1.8 < a / b < 2.2  # O(eps)
    plain = torch.cat(
        [t.reshape(-1) for t in torch.autograd.grad(_loss(model, x, y), list(model.parameters()))]
    )
    assert errors[-1] < 0.01 * float((exact - plain).norm())  # small against the regularizer's term


def test_exact_on_a_quadratic_loss_for_any_step() -> None:
    torch.manual_seed(2)
    model = nn.Linear(6, 3).double()  # mse of a linear model: quadratic in the weights
    x, y = _batch(3)[0][:, :5], _batch(3)[1]
    x = torch.cat([x, torch.ones(16, 1, dtype=torch.float64)], 1)
    y = torch.cat([y, y[:, :1]], 1)
    exact = _exact_regularized_gradient(model, x, y, 0.3)
    for eps in (0.5, 0.05):
        for scheme in ("forward", "backward"):
            d = _one_direction(model, x, y, 0.3, eps, scheme)
            torch.testing.assert_close(d, exact, rtol=1e-11, atol=1e-13)


def test_forward_with_step_equal_to_gamma_is_the_gradient_at_the_ascent_point() -> None:
    model, (x, y) = _model(3), _batch(1)
    params = list(model.parameters())
    g = torch.autograd.grad(_loss(model, x, y), params)
    probe = copy.deepcopy(model)
    with torch.no_grad():
        for p, gi in zip(probe.parameters(), g):
            p.add_(0.07 * gi)
    sam_unnormalized = torch.cat(
        [t.reshape(-1) for t in torch.autograd.grad(_loss(probe, x, y), list(probe.parameters()))]
    )
    d = _one_direction(model, x, y, 0.07, 0.07, "forward")
    torch.testing.assert_close(d, sam_unnormalized, rtol=1e-12, atol=1e-14)


def test_bad_settings_are_refused() -> None:
    model = _model(0)
    with pytest.raises(ValueError, match="fd_step"):
        gradkit.create_optimizer(model, "fd_grad_reg", fd_step=0.0)
    with pytest.raises(ValueError, match="gamma"):
        gradkit.create_optimizer(model, "fd_grad_reg", gamma=-1.0)
    with pytest.raises(ValueError, match="scheme"):
        gradkit.create_optimizer(model, "fd_grad_reg", scheme="central")
    with pytest.raises(ValueError, match="maximize"):  # at construction, not mid-run
        gradkit.create_optimizer(model, "fd_grad_reg", maximize=True)
    opt = gradkit.create_optimizer(model, "fd_grad_reg")
    with pytest.raises(ValueError, match="maximize"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "maximize": True})
    assert len(opt.param_groups) == 1  # the refused group was not added
    opt.param_groups[0]["maximize"] = True  # a live setting changed after construction
    x, y = _batch(0)
    with pytest.raises(ValueError, match="maximize"):
        opt.step(_closure(opt, model, x, y))
