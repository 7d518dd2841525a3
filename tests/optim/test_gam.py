"""GAM against the paper's algorithm box written out (float64), plus the drop-in contract."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gradkit.optim.gam import GAM
from helpers import make_mlp, max_rel_diff, regression_batches

XI = 1e-12


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread avoids oversubscription on a loaded 2-core runner."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _closure(opt, model, x, y):
    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    return closure


def _norm(ts):
    return torch.sqrt(sum((t * t).sum() for t in ts))


def _reference_gam(model, batches, rho, alpha, r, lr, momentum):
    """Zhang et al. Algorithm 1 with finite-difference Hessian-vector products; SGD-momentum base."""
    params = list(model.parameters())
    buf = None

    def grad_at(point, x, y):
        with torch.no_grad():
            for p, v in zip(params, point):
                p.copy_(v)
        loss = nn.functional.mse_loss(model(x), y)
        return [g.detach() for g in torch.autograd.grad(loss, params)]

    for x, y in batches:
        w = [p.detach().clone() for p in params]
        g0 = grad_at(w, x, y)
        n0 = _norm(g0)
        g1 = grad_at([a + r * g / (n0 + XI) for a, g in zip(w, g0)], x, y)
        f = [(a - b) / r for a, b in zip(g1, g0)]
        nf = _norm(f)
        w_adv = [a + rho * v / (nf + XI) for a, v in zip(w, f)]
        g2 = grad_at(w_adv, x, y)
        n2 = _norm(g2)
        g3 = grad_at([a + r * g / (n2 + XI) for a, g in zip(w_adv, g2)], x, y)
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
    opt = GAM(a.parameters(), "sgd", lr=0.05, momentum=0.9, **hp)
    for x, y in batches:
        opt.step(_closure(opt, a, x, y))
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
    opt = GAM(a.parameters(), "adamw", alpha=0.0, lr=1e-2)
    for x, y in batches:
        opt.step(_closure(opt, a, x, y))
    ref = torch.optim.AdamW(b.parameters(), lr=1e-2)
    for x, y in batches:
        ref.step(_closure(ref, b, x, y))
    assert max_rel_diff(a, b) < 1e-12


def test_state_dict_resume_is_exact():
    batches = regression_batches(40)
    kw = dict(lr=0.05, momentum=0.9)

    def run(model, opt, bs):
        for x, y in bs:
            opt.step(_closure(opt, model, x, y))

    ref = make_mlp()
    run(ref, GAM(ref.parameters(), **kw), batches)
    first = make_mlp()
    opt1 = GAM(first.parameters(), **kw)
    run(first, opt1, batches[:20])
    sd = copy.deepcopy(opt1.state_dict())
    resumed = make_mlp(seed=3)
    resumed.load_state_dict(first.state_dict())
    opt2 = GAM(resumed.parameters(), **kw)
    opt2.load_state_dict(sd)
    run(resumed, opt2, batches[20:])
    for p, q in zip(ref.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_missing_closure_is_a_clear_error():
    opt = GAM(make_mlp().parameters())
    with pytest.raises(RuntimeError, match="GAM needs a closure.*four points"):
        opt.step()


def test_maximize_is_refused():
    model = make_mlp()
    opt = GAM(model.parameters(), maximize=True)
    x, y = regression_batches(1)[0]
    with pytest.raises(ValueError, match="maximize"):
        opt.step(_closure(opt, model, x, y))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(rho=-1.0), "rho must be >= 0"),
        (dict(alpha=-0.5), "alpha must be >= 0"),
        (dict(fd_radius=0.0), "fd_radius must be > 0"),
        (dict(perturb_eps=float("nan")), "perturb_eps must be >= 0"),
    ],
)
def test_bad_hyperparameters_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        GAM(make_mlp().parameters(), **kw)
