"""Saddle-free Newton: the direction against the dense ``(|H| + damping I)^-1 g`` from an
eigendecomposition, the Krylov restriction, and the paper's behaviour: Newton is attracted to a
saddle point, saddle-free Newton escapes it to a minimum."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

import gradkit
from gradkit.optim.saddle_free_newton import SaddleFreeNewton
from gradkit.transforms.newton import ModelClosure
from helpers import single_threaded_tests  # noqa: F401  (autouse)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(24, 4, generator=g, dtype=torch.float64), torch.randn(
        24, 2, generator=g, dtype=torch.float64
    )


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _dense(model, loss_fn, x, y):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def f(w):
        parts, i = {}, 0
        for n, s in zip(names, shapes):
            k = math.prod(s)
            parts[n] = w[i : i + k].view(s)
            i += k
        return loss_fn(functional_call(model, parts, (x,)), y)

    w0 = _flat(model)
    return (
        w0,
        torch.autograd.functional.jacobian(f, w0),
        torch.autograd.functional.hessian(f, w0),
    )


def _abs_solve(h, g, damping):
    lam, v = torch.linalg.eigh(h)
    return v @ ((v.T @ g) / (lam.abs() + damping))


@pytest.mark.parametrize(
    ("kind", "tol"), [("model", 1e-8), ("create_graph", 1e-8), ("plain", 1e-5)]
)
def test_full_krylov_direction_matches_the_dense_abs_hessian_solve(kind: str, tol: float) -> None:
    model, (x, y) = _mlp(), _data()
    loss_fn = nn.functional.mse_loss
    w0, g, h = _dense(model, loss_fn, x, y)
    assert float(torch.linalg.eigvalsh(h)[0]) < -1e-3  # indefinite: |H| differs from H
    n = w0.numel()
    opt = SaddleFreeNewton(model.parameters(), lr=0.5, damping=0.05, krylov_dim=n)
    if kind == "model":
        closure = ModelClosure(model, loss_fn, x, y, opt)
    else:

        def closure():
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward(create_graph=kind == "create_graph")
            return loss

    opt.step(closure)
    want = w0 - 0.5 * _abs_solve(h, g, 0.05)
    torch.testing.assert_close(_flat(model), want, rtol=tol, atol=tol)
    assert opt.last_stats["min_ritz"] == pytest.approx(float(torch.linalg.eigvalsh(h)[0]), abs=1e-4)


def test_a_short_krylov_space_gives_its_own_projected_solve() -> None:
    # k steps: d = Q (|T| + damping)^-1 Q^T g with Q an orthonormal basis of span{g, Hg, ...}
    model, (x, y) = _mlp(), _data()
    loss_fn = nn.functional.mse_loss
    w0, g, h = _dense(model, loss_fn, x, y)
    k = 6
    krylov = torch.stack([torch.linalg.matrix_power(h, j) @ g for j in range(k)], dim=1)
    q, _ = torch.linalg.qr(krylov)
    t = q.T @ h @ q
    want = w0 - q @ _abs_solve(t, q.T @ g, 0.1)
    opt = SaddleFreeNewton(model.parameters(), damping=0.1, krylov_dim=k)
    opt.step(ModelClosure(model, loss_fn, x, y, opt))
    torch.testing.assert_close(_flat(model), want, rtol=1e-7, atol=1e-8)
    assert opt.last_stats["iterations"] == k


def _saddle(p: torch.Tensor) -> torch.Tensor:
    """f(x, y) = x^2 - y^2 + y^4 / 4: a saddle at 0, minima at (0, +-sqrt(2))."""
    return p[0] ** 2 - p[1] ** 2 + p[1] ** 4 / 4


def test_newton_is_attracted_to_the_saddle_and_saddle_free_newton_escapes() -> None:
    start = torch.tensor([0.5, 0.1], dtype=torch.float64)
    # Newton, written out: x <- x - H^-1 g
    z = start.clone()
    for _ in range(30):
        z = z - torch.linalg.solve(
            torch.autograd.functional.hessian(_saddle, z),
            torch.autograd.functional.jacobian(_saddle, z),
        )
    assert float(z.norm()) < 1e-8  # converged to the saddle point
    # saddle-free Newton (the optimizer)
    p = nn.Parameter(start.clone())
    opt = SaddleFreeNewton([p], damping=1e-3, krylov_dim=2)

    def closure():
        opt.zero_grad()
        loss = _saddle(p)
        loss.backward()
        return loss

    opt.step(closure)
    # the first step: Newton moves y from 0.1 to ~0 (the saddle), saddle-free Newton to ~0.2
    assert float(p[1]) > 0.19 and opt.last_stats["min_ritz"] < 0
    for _ in range(29):
        opt.step(closure)
    # (on the way it overshoots where f'' = 0, at y^2 = 2/3: undamped |H| is ~0 there; the
    # paper picks the damping by line search)
    torch.testing.assert_close(p.detach(), torch.tensor([0.0, math.sqrt(2.0)], dtype=torch.float64))
    assert _saddle(p.detach()) == pytest.approx(-1.0, abs=1e-10)  # the minimum value


def test_registered_and_refuses_bad_settings() -> None:
    info = gradkit.optim.registry.get_info("saddle_free_newton")
    assert info.needs_closure and info.defaults["krylov_dim"] == 10
    model = _mlp()
    with pytest.raises(ValueError, match="Invalid damping: 0.0; damping must be"):
        SaddleFreeNewton(model.parameters(), damping=0.0)
    with pytest.raises(ValueError, match="Invalid krylov_dim: 0; krylov_dim must be"):
        SaddleFreeNewton(model.parameters(), krylov_dim=0)
    with pytest.raises(ValueError, match="complex"):
        SaddleFreeNewton([nn.Parameter(torch.zeros(2, dtype=torch.complex64))])
