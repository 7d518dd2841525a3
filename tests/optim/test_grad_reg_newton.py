"""Gradient-regularized Newton against the dense formula ``x - lr (H~ + sqrt(L |g|) I)^-1 g``.

The dense references use ``torch.autograd.functional.hessian`` (exact Hessian), the dense
output Jacobian (Gauss-Newton) and per-example gradients from ``torch.func`` (empirical
Fisher), all in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

import gradkit
from gradkit.optim.grad_reg_newton import GradRegNewton
from gradkit.transforms.newton import ModelClosure
from helpers import single_threaded_tests  # noqa: F401  (autouse)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()


def _data(seed: int = 1, n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randn(
        n, 2, generator=g, dtype=torch.float64
    )


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _as_dict(model: nn.Module, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for name, p in model.named_parameters():
        out[name] = flat[i : i + p.numel()].view_as(p)
        i += p.numel()
    return out


def _loss_of(model, loss_fn, x, y):
    return lambda w: loss_fn(functional_call(model, _as_dict(model, w), (x,)), y)


def _dense_step(w, g, c, lr, big_l):
    lam = math.sqrt(big_l * float(g.norm()))
    return w - lr * torch.linalg.solve(c + lam * torch.eye(len(w), dtype=w.dtype), g)


def _closure(kind: str, model, loss_fn, x, y, opt):
    if kind == "model":
        return ModelClosure(model, loss_fn, x, y, opt)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward(create_graph=kind == "create_graph")
        return loss

    return closure


@pytest.mark.parametrize(
    ("kind", "tol"), [("model", 1e-9), ("create_graph", 1e-9), ("plain", 1e-6)]
)
def test_one_exact_step_matches_the_dense_formula(kind: str, tol: float) -> None:
    model, (x, y) = _mlp(), _data()
    loss_fn = nn.functional.mse_loss
    w0 = _flat(model)
    f = _loss_of(model, loss_fn, x, y)
    h = torch.autograd.functional.hessian(f, w0)
    g = torch.autograd.functional.jacobian(f, w0)
    big_l = (float(torch.linalg.eigvalsh(h)[0].abs()) + 0.5) ** 2 / float(g.norm())  # H+lam I > 0
    want = _dense_step(w0, g, h, 0.7, big_l)
    opt = GradRegNewton(model.parameters(), lr=0.7, L=big_l, cg_tol=1e-13, cg_max_iter=200)
    loss = opt.step(_closure(kind, model, loss_fn, x, y, opt))
    assert float(loss) == pytest.approx(float(f(w0)))
    torch.testing.assert_close(_flat(model), want, rtol=tol, atol=tol)
    stats = opt.last_stats
    assert stats["lambda"] == pytest.approx(math.sqrt(big_l * float(g.norm())))
    assert 1 <= stats["iterations"] <= 200
    # the gradients are left as the closure computed them at the old point
    got_g = torch.cat([p.grad.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(got_g, g, rtol=1e-12, atol=1e-12)


def _gauss_newton(model, x):
    jac = jacrev(lambda w: functional_call(model, _as_dict(model, w), (x,)).reshape(-1))(
        _flat(model)
    )
    return jac.T @ jac * (2.0 / jac.shape[0])  # mse over B*C entries: H_out = 2/(B*C) I


def _emp_fisher(model, loss_fn, x, y):
    def one(w, xi, yi):
        return loss_fn(functional_call(model, _as_dict(model, w), (xi[None],)), yi[None])

    per = vmap(grad(one), in_dims=(None, 0, 0))(_flat(model), x, y)  # [N, P]
    return per.T @ per / x.shape[0]


@pytest.mark.parametrize("hessian", ["gauss_newton", "fisher"])
def test_one_approximate_step_matches_the_dense_formula(hessian: str) -> None:
    model, (x, y) = _mlp(2), _data(3)
    loss_fn = nn.functional.mse_loss
    w0 = _flat(model)
    g = torch.autograd.functional.jacobian(_loss_of(model, loss_fn, x, y), w0)
    c = _gauss_newton(model, x) if hessian == "gauss_newton" else _emp_fisher(model, loss_fn, x, y)
    mu = 0.05 if hessian == "fisher" else 0.0  # weight_decay: f + mu/2 |x|^2, curvature c + mu I
    want = _dense_step(w0, g + mu * w0, c + mu * torch.eye(len(w0), dtype=w0.dtype), 1.0, 0.3)
    opt = GradRegNewton(
        model.parameters(),
        L=0.3,
        weight_decay=mu,
        hessian=hessian,
        cg_tol=1e-13,
        cg_max_iter=300,
    )
    opt.step(ModelClosure(model, loss_fn, x, y, opt))
    torch.testing.assert_close(_flat(model), want, rtol=1e-9, atol=1e-9)


def test_diagonal_step_is_exact_for_a_separable_loss() -> None:
    # f(w) = sum_i softplus(a_i w_i) + w_i^2 / 2 has a diagonal Hessian, so every Rademacher probe
    # gives z * (H z) = diag(H) exactly: the step is (diag(H) + lam)^-1 g
    a = torch.linspace(-2.0, 3.0, 7, dtype=torch.float64)
    w = nn.Parameter(torch.linspace(-1.0, 1.0, 7, dtype=torch.float64))

    def f(v):
        return (nn.functional.softplus(a * v) + 0.5 * v**2).sum()

    w0 = w.detach().clone()
    h = torch.autograd.functional.hessian(f, w0)
    g = torch.autograd.functional.jacobian(f, w0)
    assert torch.equal(h, torch.diag(torch.diagonal(h)))
    want = w0 - g / (torch.diagonal(h) + math.sqrt(2.0 * float(g.norm())))
    opt = GradRegNewton([w], L=2.0, hessian="diagonal", diag_samples=3)

    def closure():
        opt.zero_grad()
        loss = f(w)
        loss.backward(create_graph=True)
        return loss

    opt.step(closure)
    torch.testing.assert_close(w.detach(), want, rtol=1e-12, atol=1e-12)


def _logreg(n: int = 80, d: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w_true = torch.randn(d, generator=g, dtype=torch.float64)
    y = (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(x @ w_true)).double()
    return x, y


def _logreg_loss(w, x, y, mu=1e-3):
    return nn.functional.binary_cross_entropy_with_logits(x @ w, y) + 0.5 * mu * w.dot(w)


def test_many_steps_match_the_written_out_iteration() -> None:
    x, y = _logreg()
    w = nn.Parameter(torch.zeros(6, dtype=torch.float64))
    opt = GradRegNewton([w], lr=1.0, L=0.5, cg_tol=1e-13, cg_max_iter=50)
    ref = torch.zeros(6, dtype=torch.float64)
    for _ in range(25):

        def closure():
            opt.zero_grad()
            loss = _logreg_loss(w, x, y)
            loss.backward(create_graph=True)
            return loss

        opt.step(closure)
        f = lambda v: _logreg_loss(v, x, y)  # noqa: E731
        ref = _dense_step(
            ref,
            torch.autograd.functional.jacobian(f, ref),
            torch.autograd.functional.hessian(f, ref),
            1.0,
            0.5,
        )
        torch.testing.assert_close(w.detach(), ref, rtol=1e-9, atol=1e-10)


class _LogReg(nn.Module):
    def __init__(self, d: int, k: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, k, dtype=torch.float64)
        nn.init.zeros_(self.lin.weight)
        nn.init.zeros_(self.lin.bias)

    def forward(self, x):
        return self.lin(x)


@pytest.mark.parametrize(
    ("hessian", "adaptive"),
    [("gauss_newton", False), ("fisher", False), ("diagonal", False), ("fisher", True)],
)
def test_linear_convergence_on_softmax_regression(hessian: str, adaptive: bool) -> None:
    """The paper's applied claim at small size: with approximate Hessians the loss gap of
    softmax regression shrinks linearly, here by at least 2x every 4 steps over 24 steps."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(120, 5, generator=g, dtype=torch.float64)
    y = (
        x @ torch.randn(5, 3, generator=g, dtype=torch.float64)
        + torch.randn(120, 3, generator=g, dtype=torch.float64)
    ).argmax(1)
    loss_fn = nn.functional.cross_entropy
    # f*: exact Newton (dense, written out) to convergence
    ref = _LogReg(5, 3)
    f = _loss_of(ref, loss_fn, x, y)
    w = _flat(ref)
    for _ in range(40):
        w = w - torch.linalg.solve(
            torch.autograd.functional.hessian(f, w) + 1e-10 * torch.eye(len(w), dtype=w.dtype),
            torch.autograd.functional.jacobian(f, w),
        )
    f_star = float(f(w))
    assert float(torch.autograd.functional.jacobian(f, w).norm()) < 1e-10
    model = _LogReg(5, 3)
    opt = GradRegNewton(
        model.parameters(),
        L=1.0,
        hessian=hessian,
        cg_max_iter=30,
        cg_tol=1e-8,
        adaptive=adaptive,
    )
    gaps = []
    for _ in range(24):
        gaps.append(float(opt.step(ModelClosure(model, loss_fn, x, y, opt))) - f_star)
    assert all(b >= 0 for b in gaps)
    for t in range(0, 20, 4):
        assert gaps[t + 4] <= 0.5 * gaps[t] or gaps[t + 4] < 1e-12, (hessian, t, gaps)


def test_gauss_newton_needs_a_model_closure_and_autograd_refuses_finite_differences() -> None:
    model, (x, y) = _mlp(), _data()

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    opt = GradRegNewton(model.parameters(), hessian="gauss_newton")
    with pytest.raises(TypeError, match="ModelClosure"):
        opt.step(closure)
    opt = GradRegNewton(model.parameters(), hvp="autograd")
    with pytest.raises(RuntimeError, match="create_graph=True"):
        opt.step(closure)
    with pytest.raises(ValueError, match="maximize=True has no meaning"):
        GradRegNewton(model.parameters(), hessian="fisher", maximize=True)
    with pytest.raises(RuntimeError, match="closure"):
        GradRegNewton(model.parameters()).step()


def test_finite_differences_restore_parameters_and_gradients_and_maximize_ascends() -> None:
    # maximize: ascend -f, i.e. the step for f with the curvature of -f (a concave quadratic)
    a = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -1.0], dtype=torch.float64)
    w = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = GradRegNewton([w], L=0.0, maximize=True, cg_tol=1e-12)

    def closure():
        opt.zero_grad(set_to_none=False)
        loss = -(0.5 * w @ a @ w - b @ w)  # concave: its maximiser solves a w = b
        loss.backward()
        return loss

    opt.step(closure)
    torch.testing.assert_close(w.detach(), torch.linalg.solve(a, b), rtol=1e-7, atol=1e-8)
    assert torch.equal(w.grad, b)  # the gradient at the old point (w = 0), restored in place


def test_registered_and_created_by_name() -> None:
    info = gradkit.optim.registry.get_info("grad_reg_newton")
    assert info.needs_closure and info.defaults["hessian"] == "exact"
    opt = gradkit.create_optimizer(_mlp(), "grad_reg_newton", L=2.0, hessian="fisher")
    assert isinstance(opt, GradRegNewton) and opt.param_groups[0]["L"] == 2.0


def _adaptive_reference(x, y, w, gamma, big_l, steps, mu):
    """The adaptive search written out with dense Hessians: lambda = |g| / gamma; accept if
    f - f(w - d) >= |g(w - d)|^2 / (8 lambda), then gamma *= 2, else gamma /= 2 and retry."""

    def f(v):
        return _logreg_loss(v, x, y, mu)

    out = []
    for _ in range(steps):
        g = torch.autograd.functional.jacobian(f, w)
        h = torch.autograd.functional.hessian(f, w)
        if gamma is None:
            gamma = math.sqrt(float(g.norm()) / big_l)
        for _ in range(40):
            lam = float(g.norm()) / gamma
            d = torch.linalg.solve(h + lam * torch.eye(len(w), dtype=w.dtype), g)
            g_new = torch.autograd.functional.jacobian(f, w - d)
            if float(f(w)) - float(f(w - d)) >= float(g_new.dot(g_new)) / (8 * lam):
                gamma *= 2
                break
            gamma /= 2
        w = w - d
        out.append((w.clone(), gamma))
    return out


@pytest.mark.parametrize("mu", [0.0, 1e-2])
def test_adaptive_search_matches_the_written_out_algorithm(mu: float) -> None:
    x, y = _logreg()
    x = 3.0 * x  # sharper curvature: the search has to reject some trials
    w = nn.Parameter(torch.zeros(6, dtype=torch.float64))
    # L = 1e-4 starts with an over-long (Newton) step, which the search must shorten
    opt = GradRegNewton([w], L=1e-4, adaptive=True, weight_decay=mu, cg_max_iter=6)
    # 6 steps: later, at the optimum, the test f - f(w - d) >= ... compares differences at the
    # rounding level, and rounding decides between the two implementations
    ref = _adaptive_reference(x, y, torch.zeros(6, dtype=torch.float64), None, 1e-4, 6, mu)
    trials = []
    for want_w, want_gamma in ref:

        def closure():
            opt.zero_grad()
            loss = nn.functional.binary_cross_entropy_with_logits(x @ w, y)
            loss.backward()
            return loss

        opt.step(closure)
        trials.append(opt.last_stats["trials"])
        # Lanczos (gradkit) vs a dense solve (reference), lambda down to ~1e-4: ~1e-8 apart
        torch.testing.assert_close(w.detach(), want_w, rtol=1e-6, atol=1e-8)
        assert float(opt.state[w]["gamma"]) == pytest.approx(want_gamma, rel=1e-12)
    assert max(trials) > 1  # the search did reject steps


def test_adaptive_state_resumes_bit_exactly() -> None:
    x, y = _logreg(seed=3)

    def run(opt, w, steps):
        for _ in range(steps):

            def closure():
                opt.zero_grad()
                loss = _logreg_loss(w, x, y)
                loss.backward()
                return loss

            opt.step(closure)

    w1 = nn.Parameter(torch.zeros(6, dtype=torch.float64))
    o1 = GradRegNewton([w1], adaptive=True)
    run(o1, w1, 8)
    w2 = nn.Parameter(torch.zeros(6, dtype=torch.float64))
    o2 = GradRegNewton([w2], adaptive=True)
    run(o2, w2, 4)
    sd = o2.state_dict()
    assert "gamma" in sd["state"][0]
    w3 = nn.Parameter(w2.detach().clone())
    o3 = GradRegNewton([w3], adaptive=True)
    o3.load_state_dict(sd)
    run(o3, w3, 4)
    assert torch.equal(w1, w3)
