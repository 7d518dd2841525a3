"""Lanczos top eigenpairs against the dense eigendecomposition and against power iteration."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvature.curvature_dense import DenseOperator
from gradkit.curvature import GaussNewtonOperator, HessianOperator, top_eigenpairs
from gradkit.curvature._utils import flatten, unflatten


@pytest.mark.parametrize("k", [1, 3, 6])
def test_top_eigenvalues_match_dense(ce_problem, k):
    p = ce_problem
    dense = torch.linalg.eigvalsh(p.hess).flip(0)[:k]
    op = HessianOperator(p.model, p.loss_fn, (p.x, p.y))
    vals, vecs = top_eigenpairs(op, k=k, tol=1e-6, max_iter=op.dim)
    torch.testing.assert_close(vals, dense, rtol=1e-4, atol=0)
    assert len(vecs) == k
    for lam, vec in zip(vals, vecs):
        v = flatten(vec)
        assert float(v.norm()) == pytest.approx(1.0, abs=1e-10)
        # a true eigenvector: |H v - lambda v| small relative to lambda
        assert float((p.hess @ v - lam * v).norm()) <= 1e-4 * abs(float(lam))
        assert [t.shape for t in vec] == [q.shape for q in op.params]


def test_gauss_newton_top_eigenvalue(mse_problem):
    p = mse_problem
    op = GaussNewtonOperator(p.model, p.loss_fn, (p.x, p.y))
    vals, _ = top_eigenpairs(op, k=2, tol=1e-6)
    jac = torch.func.jacrev(
        lambda flat: torch.func.functional_call(p.model, _unflat(p.model, flat), (p.x,)).reshape(-1)
    )(torch.cat([q.detach().reshape(-1) for q in p.model.parameters()]))
    dense = torch.linalg.eigvalsh(2.0 / jac.shape[0] * jac.T @ jac).flip(0)[:2]
    torch.testing.assert_close(vals, dense, rtol=1e-4, atol=0)


def _unflat(model: nn.Module, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for n, q in model.named_parameters():
        out[n] = flat[i : i + q.numel()].view_as(q)
        i += q.numel()
    return out


def test_repeated_and_negative_eigenvalues():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=torch.float64))
    ev = torch.tensor([5.0, 5.0, 5.0, 2.0] + [0.0] * 20 + [-1.0] * 5 + [-7.0], dtype=torch.float64)
    op = DenseOperator(q @ torch.diag(ev) @ q.T)
    vals, _ = top_eigenpairs(op, k=4, tol=1e-8, max_iter=30)
    torch.testing.assert_close(vals, ev[:4], rtol=1e-8, atol=1e-8)
    # identity: Krylov space of dimension 1, found by restarts
    op = DenseOperator(torch.eye(5, dtype=torch.float64))
    vals, vecs = top_eigenpairs(op, k=3)
    torch.testing.assert_close(vals, torch.ones(3, dtype=torch.float64))
    gram = torch.stack([flatten(v) for v in vecs])
    torch.testing.assert_close(gram @ gram.T, torch.eye(3, dtype=torch.float64), atol=1e-10, rtol=0)


def _power_iteration_hvps(op, target: float, rel: float, max_iter: int = 2000) -> int:
    """Plain power iteration (as in PyHessian): products until |lambda - target| <= rel*target."""
    g = torch.Generator().manual_seed(1)
    v = torch.randn(op.dim, generator=g, dtype=torch.float64)
    v /= v.norm()
    for i in range(1, max_iter + 1):
        hv = flatten(op.matvec(unflatten(v, op.params)))
        lam = float(v @ hv)
        if abs(lam - target) <= rel * abs(target):
            return i
        v = hv / hv.norm()
    return max_iter


def test_lanczos_needs_fewer_products_than_power_iteration(ce_problem):
    p = ce_problem
    top = float(torch.linalg.eigvalsh(p.hess)[-1])
    op = HessianOperator(p.model, p.loss_fn, (p.x, p.y))
    vals, _ = top_eigenpairs(op, k=1, tol=1e-3)
    assert abs(float(vals[0]) - top) <= 1e-4 * top
    lanczos_count = op.num_matvecs
    power_count = _power_iteration_hvps(HessianOperator(p.model, p.loss_fn, (p.x, p.y)), top, 1e-4)
    assert lanczos_count < power_count


def test_matches_pyhessian_power_iteration(ce_problem):
    pyhessian = pytest.importorskip("pyhessian")
    p = ce_problem
    torch.manual_seed(0)
    ref, _ = pyhessian.hessian(p.model, p.loss_fn, data=(p.x, p.y), cuda=False).eigenvalues(
        maxIter=1000, tol=1e-10, top_n=2
    )
    vals, _ = top_eigenpairs(HessianOperator(p.model, p.loss_fn, (p.x, p.y)), k=2, tol=1e-6)
    torch.testing.assert_close(vals, torch.tensor(ref, dtype=torch.float64), rtol=1e-5, atol=0)


def test_warm_start_saves_products(ce_problem):
    p = ce_problem
    op = HessianOperator(p.model, p.loss_fn, (p.x, p.y))
    vals, vecs = top_eigenpairs(op, k=1, tol=1e-5)
    cold = op.num_matvecs
    op2 = HessianOperator(p.model, p.loss_fn, (p.x, p.y))
    vals2, _ = top_eigenpairs(op2, k=1, tol=1e-5, init=vecs[0])
    assert op2.num_matvecs < cold
    torch.testing.assert_close(vals2, vals, rtol=1e-6, atol=0)


def test_gradient_start(ce_problem):
    p = ce_problem
    dense = torch.linalg.eigvalsh(p.hess).flip(0)[:2]
    op = HessianOperator(p.model, p.loss_fn, (p.x, p.y))
    vals, _ = top_eigenpairs(op, k=2, tol=1e-6, init="gradient")
    torch.testing.assert_close(vals, dense, rtol=1e-4, atol=0)
    # the cached gradient equals a fresh one
    fresh = HessianOperator(p.model, p.loss_fn, (p.x, p.y), cache_graph=False).gradient()
    torch.testing.assert_close(flatten(op.gradient()), flatten(fresh))
    with pytest.raises(ValueError, match="init must be"):
        top_eigenpairs(op, init="grad")


def test_argument_errors(ce_problem):
    p = ce_problem
    op = HessianOperator(p.model, p.loss_fn, (p.x, p.y))
    with pytest.raises(ValueError, match="k must be"):
        top_eigenpairs(op, k=0)
    with pytest.raises(ValueError, match="tol"):
        top_eigenpairs(op, tol=0.0)
    with pytest.raises(ValueError, match="max_iter"):
        top_eigenpairs(op, max_iter=0)
    with pytest.raises(ValueError, match="init"):
        top_eigenpairs(op, init=[torch.zeros(2)])
