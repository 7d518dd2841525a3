"""The shared Kronecker-factor parts: inverse roots, eigenbases and their QR refresh, factor
statistics, grafting, and checkpoints taken between two refreshes."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import gradkit
from gradkit.core.transform import StepContext
from gradkit.transforms import Sign
from gradkit.transforms.preconditioning import (
    Grafting,
    damped_inverse_root,
    eigenbasis,
    kronecker_sides,
    refresh_eigenbasis,
    update_factor,
)

F64 = torch.float64


def _spd(n: int, seed: int = 0, low: float = -2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    return q @ torch.diag(torch.logspace(low, 1, n, dtype=F64)) @ q.T


@pytest.mark.parametrize("root", [2, 4])
def test_damped_inverse_root(root: int) -> None:
    f, eps = _spd(6), 1e-3
    r = damped_inverse_root(f, root, eps)
    torch.testing.assert_close(
        torch.linalg.matrix_power(r, root) @ (f + eps * torch.eye(6, dtype=F64)),
        torch.eye(6, dtype=F64), rtol=0, atol=1e-10,
    )  # fmt: skip


def test_damped_inverse_root_of_a_singular_factor_is_finite() -> None:
    v = torch.randn(5, 1, dtype=F64)
    r = damped_inverse_root(v @ v.T, 4, 1e-6)
    assert torch.isfinite(r).all()
    # (v v^T + eps I)^(-1/4) v = (|v|^2 + eps)^(-1/4) v; on v's complement: eps^(-1/4)
    torch.testing.assert_close(r @ v, v * (v.square().sum() + 1e-6) ** -0.25, rtol=1e-8, atol=0)
    w = torch.linalg.qr(torch.cat([v, torch.randn(5, 1, dtype=F64)], 1))[0][:, 1:]
    torch.testing.assert_close(r @ w, w * 1e-6**-0.25, rtol=1e-6, atol=0)


def test_eigenbasis_diagonalizes_by_decreasing_eigenvalue() -> None:
    f = _spd(7)
    q = eigenbasis(f)
    d = q.T @ f @ q
    torch.testing.assert_close(d, torch.diag(torch.diagonal(d)), rtol=0, atol=1e-10)
    assert (torch.diagonal(d)[:-1] >= torch.diagonal(d)[1:]).all()


def test_refresh_eigenbasis_is_orthonormal_sorted_and_converges() -> None:
    """One power-iteration step per refresh: repeated from a random orthonormal start it
    converges to the eigenbasis (distinct eigenvalues), columns by decreasing eigenvalue."""
    f = _spd(6, low=-1.0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=F64, generator=torch.Generator().manual_seed(3)))
    for _ in range(400):
        q, order = refresh_eigenbasis(f, q)
        torch.testing.assert_close(q.T @ q, torch.eye(6, dtype=F64), rtol=0, atol=1e-12)
    d = q.T @ f @ q
    torch.testing.assert_close(d, torch.diag(torch.diagonal(d)), rtol=0, atol=1e-8)
    torch.testing.assert_close(torch.diagonal(d), torch.linalg.eigvalsh(f).flip(0), rtol=1e-8,
                               atol=0)  # fmt: skip
    assert torch.equal(order, torch.arange(6))  # already sorted


def test_refresh_permutation_sorts_by_estimated_eigenvalue() -> None:
    f = torch.diag(torch.tensor([1.0, 3.0, 2.0], dtype=F64))
    q, order = refresh_eigenbasis(f, torch.eye(3, dtype=F64))
    assert order.tolist() == [1, 2, 0]
    torch.testing.assert_close(q.abs(), torch.eye(3, dtype=F64)[:, [1, 2, 0]])


def test_kronecker_sides() -> None:
    assert kronecker_sides((4, 3, 2, 2), 100, False) == (4, 12, 4, 12)
    assert kronecker_sides((4, 300), 100, False) == (4, 300, 4, 0)
    assert kronecker_sides((7,), 100, False) == (7, 1, 0, 0)
    assert kronecker_sides((7,), 100, True) == (7, 1, 7, 0)
    assert kronecker_sides((), 100, True) == (1, 1, 0, 0)


def test_update_factor_sum_and_ema() -> None:
    f = torch.ones(2, 2, dtype=F64)
    update_factor(f, torch.full((2, 2), 3.0, dtype=F64), 1.0)
    assert torch.equal(f, torch.full((2, 2), 4.0, dtype=F64))
    update_factor(f, torch.zeros(2, 2, dtype=F64), 0.75)
    assert torch.equal(f, torch.full((2, 2), 3.0, dtype=F64))


def test_grafting_takes_direction_of_one_and_norm_of_the_other() -> None:
    tr = Grafting(Sign(), "sgd")
    u = [torch.tensor([3.0, -4.0], dtype=F64), torch.zeros(3, dtype=F64)]
    out = tr.update(u, tr.init(u), u, StepContext(group={}, steps=[1, 1], grads=u))
    torch.testing.assert_close(out[0], torch.tensor([5.0, -5.0], dtype=F64) / 2**0.5)
    assert torch.equal(out[1], torch.zeros(3, dtype=F64))  # a zero direction stays zero


def test_grafting_refuses_an_unknown_rule() -> None:
    with pytest.raises(ValueError, match="Invalid graft"):
        Grafting(Sign(), "lamb")


@pytest.mark.parametrize(("name", "freq"), [("shampoo", 4), ("soap", 3)])
def test_resume_between_refreshes_is_bit_exact(name: str, freq: int) -> None:
    """Saved on step 6 (the roots / bases of steps 5 and 4 in use), resumed for 8 more."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    data = [(torch.randn(8, 5), torch.randn(8, 3)) for _ in range(14)]

    def train(m, opt, steps):
        for x, y in steps:
            opt.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            opt.step()

    ref = copy.deepcopy(model)
    train(ref, gradkit.create_optimizer(ref, name, precondition_frequency=freq), data)
    first = copy.deepcopy(model)
    opt = gradkit.create_optimizer(first, name, precondition_frequency=freq)
    train(first, opt, data[:6])
    buf = io.BytesIO()
    torch.save({"m": first.state_dict(), "o": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)
    resumed = copy.deepcopy(model)
    resumed.load_state_dict(ckpt["m"])
    opt2 = gradkit.create_optimizer(resumed, name, precondition_frequency=1)
    opt2.load_state_dict(ckpt["o"])  # the saved group's frequency comes back with it
    assert opt2.param_groups[0]["precondition_frequency"] == freq
    train(resumed, opt2, data[6:])
    for p, q in zip(ref.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", ["shampoo", "soap"])
def test_nan_gradient_on_a_refresh_step_propagates_without_a_lapack_error(name: str) -> None:
    """``nonfinite="ignore"`` lets a NaN through; the refresh must not raise from ``eigh``."""
    w = torch.nn.Parameter(torch.randn(4, 3))
    opt = gradkit.create_optimizer([w], name, precondition_frequency=1)
    w.grad = torch.randn(4, 3)
    opt.step()
    w.grad = torch.full((4, 3), float("nan"))
    opt.step()
    opt.step()
    assert torch.isnan(w).any()


def test_conv_kernel_is_preconditioned_as_a_matrix() -> None:
    k = torch.nn.Parameter(torch.randn(4, 3, 2, 2))
    opt = gradkit.create_optimizer([k], "shampoo", precondition_frequency=1)
    k.grad = torch.randn(4, 3, 2, 2)
    opt.step()
    assert opt.state[k]["factor_left"].shape == (4, 4)
    assert opt.state[k]["inv_root_right"].shape == (12, 12)
    assert torch.isfinite(k).all()
