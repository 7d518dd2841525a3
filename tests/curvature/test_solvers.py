"""Conjugate gradient and the Lanczos |A|-solve against dense float64 solves."""

from __future__ import annotations

import pytest
import torch

from curvature.curvature_dense import Problem
from gradkit.curvature import GaussNewtonOperator, HessianOperator
from gradkit.curvature.solvers import conjugate_gradient, lanczos_abs_solve


def _spd(n: int, seed: int, cond: float = 100.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eig = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)
    return (q * eig) @ q.T


def _sym_indefinite(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eig = torch.linspace(-3.0, 2.0, n, dtype=torch.float64)
    return (q * eig) @ q.T


@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_cg_matches_the_dense_solve(damping: float) -> None:
    a = _spd(40, 0)
    b = torch.randn(40, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    res = conjugate_gradient(lambda v: a @ v, b, damping=damping, tol=1e-12, max_iter=200)
    want = torch.linalg.solve(a + damping * torch.eye(40, dtype=torch.float64), b)
    assert res.converged and not res.negative_curvature
    assert 1 <= res.iterations <= 200
    torch.testing.assert_close(res.x, want, rtol=1e-9, atol=1e-9)


def test_cg_iterations_follow_the_number_of_distinct_eigenvalues() -> None:
    # exact arithmetic: CG ends in as many steps as A has distinct eigenvalues (here 3)
    g = torch.Generator().manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=torch.float64))
    eig = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64).repeat_interleave(10)
    a = (q * eig) @ q.T
    b = torch.randn(30, generator=g, dtype=torch.float64)
    res = conjugate_gradient(lambda v: a @ v, b, tol=1e-10)
    assert res.iterations == 3
    torch.testing.assert_close(res.x, torch.linalg.solve(a, b), rtol=1e-8, atol=1e-8)


def test_cg_max_iter_and_tolerance_stop_it() -> None:
    a = _spd(40, 3, cond=1e4)
    b = torch.randn(40, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    res = conjugate_gradient(lambda v: a @ v, b, tol=1e-12, max_iter=5)
    assert res.iterations == 5 and not res.converged
    loose = conjugate_gradient(lambda v: a @ v, b, tol=1e-2, max_iter=400)
    assert loose.converged and loose.residual_norm <= 1e-2 * float(b.norm())
    true_res = float((b - a @ loose.x).norm())
    assert true_res == pytest.approx(loose.residual_norm, rel=1e-6, abs=1e-10)


def test_cg_on_a_curvature_operator_with_list_vectors(ce_problem: Problem) -> None:
    p = ce_problem
    op = HessianOperator(p.model, p.loss_fn, (p.x, p.y))
    lam = float(torch.linalg.eigvalsh(p.hess).min().abs()) + 0.5  # makes H + lam I definite
    b = [torch.randn_like(t) for t in op.params]
    res = conjugate_gradient(op, b, damping=lam, tol=1e-11)
    want = torch.linalg.solve(
        p.hess + lam * torch.eye(p.hess.shape[0]), torch.cat([t.reshape(-1) for t in b])
    )
    assert isinstance(res.x, list) and [t.shape for t in res.x] == [t.shape for t in op.params]
    got = torch.cat([t.reshape(-1) for t in res.x])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)  # |r| <= 1e-11 |b|, times cond
    assert op.num_matvecs == res.iterations


def test_cg_gauss_newton_operator_matches_dense(mse_problem: Problem) -> None:
    from curvature.curvature_dense import dense_jacobian

    p = mse_problem
    op = GaussNewtonOperator(p.model, p.loss_fn, (p.x, p.y))
    jac = dense_jacobian(p.model, p.x)  # [B*C, P]; mse mean over B*C entries: H_out = 2/(B*C) I
    gn = jac.T @ jac * (2.0 / jac.shape[0])
    b = [torch.randn_like(t) for t in op.params]
    res = conjugate_gradient(op, b, damping=1e-2, tol=1e-11, max_iter=1000)
    assert res.converged
    want = torch.linalg.solve(
        gn + 1e-2 * torch.eye(gn.shape[0]), torch.cat([t.reshape(-1) for t in b])
    )
    got = torch.cat([t.reshape(-1) for t in res.x])
    rhs = torch.cat([t.reshape(-1) for t in b])
    # CG controls the residual (its recurrence drifts from the true one by ~1e-8 here, as
    # rounding accumulates over 45 steps); the solution error is that times cond (~200)
    resid = (gn + 1e-2 * torch.eye(gn.shape[0])) @ got - rhs
    assert float(resid.norm()) <= 1e-7 * float(rhs.norm())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_cg_stops_at_negative_curvature() -> None:
    a = _sym_indefinite(20, 5)
    v_neg = torch.linalg.eigh(a).eigenvectors[:, 0]  # eigenvalue -3
    res = conjugate_gradient(lambda v: a @ v, v_neg, damping=0.5)
    assert res.negative_curvature and res.iterations == 1
    torch.testing.assert_close(res.x, v_neg / 0.5)  # the damped gradient step
    assert conjugate_gradient(lambda v: a @ v, torch.zeros(20, dtype=torch.float64)).iterations == 0


def _dense_abs_solve(a: torch.Tensor, b: torch.Tensor, lam: float) -> torch.Tensor:
    w, v = torch.linalg.eigh(a)
    return v @ ((v.T @ b) / (w.abs() + lam))


@pytest.mark.parametrize("damping", [0.0, 0.1])
def test_lanczos_abs_solve_with_a_full_krylov_space_is_the_dense_answer(damping: float) -> None:
    a = _sym_indefinite(25, 6)
    b = torch.randn(25, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    res = lanczos_abs_solve(lambda v: a @ v, b, num_steps=25, damping=damping)
    assert res.iterations == 25
    torch.testing.assert_close(res.x, _dense_abs_solve(a, b, damping), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(res.ritz_values, torch.linalg.eigvalsh(a), rtol=1e-8, atol=1e-8)


def test_lanczos_abs_solve_is_exact_on_an_invariant_krylov_space() -> None:
    # four distinct eigenvalues: the Krylov space of b is 4-dimensional and the solve is exact
    g = torch.Generator().manual_seed(8)
    q, _ = torch.linalg.qr(torch.randn(24, 24, generator=g, dtype=torch.float64))
    eig = torch.tensor([-2.0, -0.5, 1.0, 3.0], dtype=torch.float64).repeat_interleave(6)
    a = (q * eig) @ q.T
    b = torch.randn(24, generator=g, dtype=torch.float64)
    res = lanczos_abs_solve(lambda v: a @ v, b, num_steps=20, damping=0.05)
    assert res.iterations == 4
    torch.testing.assert_close(res.x, _dense_abs_solve(a, b, 0.05), rtol=1e-9, atol=1e-9)


def test_lanczos_abs_solve_on_a_hessian_operator(ce_problem: Problem) -> None:
    p = ce_problem
    op = HessianOperator(p.model, p.loss_fn, (p.x, p.y))
    n = p.hess.shape[0]
    b = [torch.randn_like(t) for t in op.params]
    res = lanczos_abs_solve(op, b, num_steps=n, damping=0.1)
    want = _dense_abs_solve(p.hess, torch.cat([t.reshape(-1) for t in b]), 0.1)
    torch.testing.assert_close(
        torch.cat([t.reshape(-1) for t in res.x]), want, rtol=1e-6, atol=1e-7
    )


def test_lanczos_abs_solve_few_steps_is_a_krylov_approximation() -> None:
    # a k-step answer lies in span{b, Ab, ...}; with a clustered spectrum it is already close
    a = _sym_indefinite(40, 9)
    b = torch.randn(40, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    want = _dense_abs_solve(a, b, 1.0)
    errs = [
        float((lanczos_abs_solve(lambda v: a @ v, b, num_steps=k, damping=1.0).x - want).norm())
        for k in (2, 8, 40)
    ]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-8 * float(want.norm())


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: conjugate_gradient(lambda v: v, torch.ones(3), damping=-1.0), "damping"),
        (lambda: conjugate_gradient(lambda v: v, torch.ones(3), tol=0.0), "tol"),
        (lambda: conjugate_gradient(lambda v: v, torch.ones(3), max_iter=0), "max_iter"),
        (lambda: lanczos_abs_solve(lambda v: v, torch.ones(3), num_steps=0), "num_steps"),
        (lambda: lanczos_abs_solve(lambda v: v, torch.ones(3), damping=float("nan")), "damping"),
    ],
)
def test_invalid_arguments_name_the_argument(call, name: str) -> None:
    with pytest.raises(ValueError, match=f"Invalid {name}: .*; {name} must be"):
        call()


def test_krylov_basis_solves_many_shifts_with_one_set_of_products() -> None:
    from gradkit.curvature.solvers import krylov_basis

    a = _spd(30, 11)
    b = torch.randn(30, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    calls = [0]

    def mv(v: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return a @ v

    kb = krylov_basis(mv, b, 30)
    assert calls[0] == kb.steps == 30
    for shift in (0.0, 0.1, 3.0):
        want = torch.linalg.solve(a + shift * torch.eye(30, dtype=torch.float64), b)
        torch.testing.assert_close(kb.solve(shift), want, rtol=1e-8, atol=1e-8)
    # a short basis gives the CG iterate after as many steps
    short = krylov_basis(mv, b, 5)
    cg = conjugate_gradient(lambda v: a @ v, b, damping=0.1, tol=1e-14, max_iter=5)
    torch.testing.assert_close(short.solve(0.1), cg.x, rtol=1e-8, atol=1e-10)
