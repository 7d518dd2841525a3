"""GAM against the paper's algorithm box written out (float64), plus the drop-in contract."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gradkit.optim.gam import GAM
from helpers import (
    grad_at,
    make_mlp,
    max_rel_diff,
    mse_closure,
    regression_batches,
    single_threaded_tests,  # noqa: F401  (autouse: one intra-op thread)
    train,
)
from optimizer_checks import resume_is_bit_exact

XI = 1e-12


def _norm(ts):
    return torch.sqrt(sum((t * t).sum() for t in ts))


def _reference_gam(model, batches, rho, alpha, r, lr, momentum):
    """Zhang et al. Algorithm 1 with finite-difference Hessian-vector products; SGD-momentum base."""
    params = list(model.parameters())
    buf = None
    for x, y in batches:
        w = [p.detach().clone() for p in params]
        g0 = grad_at(model, w, x, y)
        n0 = _norm(g0)
        g1 = grad_at(model, [a + r * g / (n0 + XI) for a, g in zip(w, g0)], x, y)
        f = [(a - b) / r for a, b in zip(g1, g0)]
        nf = _norm(f)
        w_adv = [a + rho * v / (nf + XI) for a, v in zip(w, f)]
        g2 = grad_at(model, w_adv, x, y)
        n2 = _norm(g2)
        g3 = grad_at(model, [a + r * g / (n2 + XI) for a, g in zip(w_adv, g2)], x, y)
        d = [a + alpha * rho * (c - b) / r for a, b, c in zip(g0, g2, g3)]
        buf = d if buf is None else [momentum * b + v for b, v in zip(buf, d)]
        with torch.no_grad():
            for p, a, b in zip(params, w, buf):
                p.copy_(a - lr * b)


def test_trajectory_matches_algorithm_box_float64():
    model = make_mlp(dtype=torch.float64)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    batches = regression_batches(100, dtype=torch.float64)
    hp = dict(rho=0.05, alpha=2.0, fd_radius=0.01)
    train(a, GAM(a.parameters(), "sgd", lr=0.05, momentum=0.9, **hp), batches, use_closure=True)
    _reference_gam(b, batches, 0.05, 2.0, 0.01, lr=0.05, momentum=0.9)
    assert max_rel_diff(a, b) < 1e-10


def test_quadratic_matches_exact_hessian_vector_products():
    """On a quadratic the finite differences are exact: compare with H = A written out."""
    torch.manual_seed(0)
    n = 8
    q = torch.randn(n, n, dtype=torch.float64)
    hess = q @ q.T / n + 0.1 * torch.eye(n, dtype=torch.float64)
    b = torch.randn(n, dtype=torch.float64)
    w = nn.Parameter(torch.randn(n, dtype=torch.float64))
    ref = w.detach().clone()
    rho, alpha, lr = 0.05, 0.5, 0.05
    opt = GAM([w], "sgd", lr=lr, rho=rho, alpha=alpha, fd_radius=0.3)

    def closure():
        opt.zero_grad()
        loss = 0.5 * w @ hess @ w - b @ w
        loss.backward()
        return loss

    for _ in range(150):
        opt.step(closure)
        g0 = hess @ ref - b
        f = hess @ g0 / (g0.norm() + XI)
        adv = ref + rho * f / (f.norm() + XI)
        g2 = hess @ adv - b
        h = rho * hess @ g2 / (g2.norm() + XI)
        ref = ref - lr * (g0 + alpha * h)
    assert torch.allclose(w.detach(), ref, rtol=1e-9, atol=1e-12)


def test_alpha_zero_is_the_base_optimizer():
    model = make_mlp(dtype=torch.float64)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    batches = regression_batches(100, dtype=torch.float64)
    train(a, GAM(a.parameters(), "adamw", alpha=0.0, lr=1e-2), batches, use_closure=True)
    train(b, torch.optim.AdamW(b.parameters(), lr=1e-2), batches, use_closure=True)
    assert max_rel_diff(a, b) < 1e-12


def test_state_dict_resume_is_exact(tmp_path):
    assert resume_is_bit_exact(
        lambda p: GAM(p, lr=0.05, momentum=0.9), tmp_path, steps=20, use_closure=True
    )


def test_missing_closure_is_a_clear_error():
    opt = GAM(make_mlp().parameters())
    with pytest.raises(RuntimeError, match="GAM needs a closure.*four points"):
        opt.step()


def test_maximize_is_refused():
    model = make_mlp()
    opt = GAM(model.parameters(), maximize=True)
    x, y = regression_batches(1)[0]
    with pytest.raises(ValueError, match="maximize"):
        opt.step(mse_closure(opt, model, x, y))
