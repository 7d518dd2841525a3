"""Hessian / Gauss-Newton / empirical-Fisher products against dense matrices (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian
from torch.utils.data import DataLoader, TensorDataset

from curvature.curvature_dense import dense_hessian, dense_jacobian, flat_params, unflat_dict
from gradkit.curvature import (
    FisherOperator,
    GaussNewtonOperator,
    HessianOperator,
    top_eigenpairs,
)
from gradkit.curvature._utils import flatten, unflatten


def _apply(op, dense: torch.Tensor, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(3):
        v = torch.randn(op.dim, generator=g, dtype=torch.float64)
        got = flatten(op.matvec(unflatten(v, op.params)))
        torch.testing.assert_close(got, dense @ v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method,cache", [("autograd", True), ("autograd", False), ("func", None)])
def test_hvp_matches_dense_hessian(ce_problem, method, cache):
    p = ce_problem
    op = HessianOperator(p.model, p.loss_fn, (p.x, p.y), cache_graph=cache, hvp_method=method)
    _apply(op, p.hess)
    assert op.num_matvecs == 3


def test_hvp_mse(mse_problem):
    p = mse_problem
    _apply(HessianOperator(p.model, p.loss_fn, (p.x, p.y)), p.hess)


@pytest.mark.parametrize("cache", [False, True])
def test_hvp_averages_batches_weighted_by_size(ce_problem, cache):
    p = ce_problem
    loader = DataLoader(TensorDataset(p.x, p.y), batch_size=16)  # 16 + 16 + 8 examples
    _apply(HessianOperator(p.model, p.loss_fn, loader, cache_graph=cache), p.hess)
    batches = [(p.x[:7], p.y[:7]), (p.x[7:], p.y[7:])]
    _apply(HessianOperator(p.model, p.loss_fn, batches, cache_graph=cache), p.hess)


def test_max_samples_cuts_the_data(ce_problem):
    p = ce_problem
    loader = DataLoader(TensorDataset(p.x, p.y), batch_size=16)
    op = HessianOperator(p.model, p.loss_fn, loader, max_samples=25)
    _apply(op, dense_hessian(p.model, p.loss_fn, p.x[:25], p.y[:25]))


def test_param_subset(ce_problem):
    p = ce_problem
    last = list(p.model[2].parameters())
    op = HessianOperator(p.model, p.loss_fn, (p.x, p.y), params=last)
    n_first = sum(q.numel() for q in p.model[0].parameters())
    _apply(op, p.hess[n_first:, n_first:])


def _dense_ggn(p) -> torch.Tensor:
    jac = dense_jacobian(p.model, p.x)  # [B*C, P]
    out = p.model(p.x).detach()

    def loss_of_out(o: torch.Tensor) -> torch.Tensor:
        return p.loss_fn(o.view_as(out), p.y)

    h_out = hessian(loss_of_out)(out.reshape(-1))
    return jac.T @ h_out @ jac


@pytest.mark.parametrize("fixture", ["ce_problem", "mse_problem"])
def test_gauss_newton_matches_dense(fixture, request):
    p = request.getfixturevalue(fixture)
    ggn = _dense_ggn(p)
    _apply(GaussNewtonOperator(p.model, p.loss_fn, (p.x, p.y)), ggn)
    _apply(GaussNewtonOperator(p.model, p.loss_fn, (p.x, p.y), cache_graph=False), ggn)
    if fixture == "mse_problem":  # closed form for MSE: (2 / (B C)) J^T J
        jac = dense_jacobian(p.model, p.x)
        torch.testing.assert_close(ggn, 2.0 / jac.shape[0] * jac.T @ jac)
    # PSD, and equal to the Hessian minus the residual term: its top eigenvalue is real
    assert torch.linalg.eigvalsh(ggn).min() > -1e-10


def test_fisher_matches_sum_of_outer_products(ce_problem):
    p = ce_problem
    rows = []
    for i in range(p.x.shape[0]):
        p.model.zero_grad()
        loss = p.loss_fn(p.model(p.x[i : i + 1]), p.y[i : i + 1])
        rows.append(flatten(torch.autograd.grad(loss, list(p.model.parameters()))))
    g = torch.stack(rows)
    fisher = g.T @ g / g.shape[0]
    _apply(FisherOperator(p.model, p.loss_fn, (p.x, p.y)), fisher)
    loader = DataLoader(TensorDataset(p.x, p.y), batch_size=16)
    _apply(FisherOperator(p.model, p.loss_fn, loader), fisher)


def test_gradient_and_loss(ce_problem):
    p = ce_problem
    op = HessianOperator(p.model, p.loss_fn, DataLoader(TensorDataset(p.x, p.y), batch_size=16))

    def f(flat):
        return p.loss_fn(functional_call(p.model, unflat_dict(p.model, flat), (p.x,)), p.y)

    flat = flat_params(p.model)
    torch.testing.assert_close(flatten(op.gradient()), torch.func.grad(f)(flat))
    assert op.loss() == pytest.approx(float(f(flat)), rel=1e-12)


def test_clear_errors(ce_problem):
    p = ce_problem

    def per_example_loss(out, y):
        return nn.functional.cross_entropy(out, y, reduction="none")

    op = HessianOperator(p.model, per_example_loss, (p.x, p.y))
    with pytest.raises(ValueError, match="scalar"):
        op.matvec([torch.zeros_like(q) for q in op.params])
    with pytest.raises(ValueError, match="empty"):
        HessianOperator(p.model, p.loss_fn, (p.x[:0], p.y[:0]))
    with pytest.raises(ValueError, match="empty"):
        HessianOperator(p.model, p.loss_fn, []).matvec([torch.zeros_like(q) for q in op.params])
    op = HessianOperator(p.model, p.loss_fn, (p.x, p.y))
    with pytest.raises(ValueError, match="shape"):
        op.matvec([torch.zeros(3) for _ in op.params])
    with pytest.raises(
        ValueError, match=r"^Invalid k: 1000; k must be <= the number of parameters \(103\)$"
    ):
        top_eigenpairs(op, k=1000)
    with pytest.raises(ValueError, match="max_samples"):
        HessianOperator(p.model, p.loss_fn, (p.x, p.y), max_samples=0)
    with pytest.raises(ValueError, match="hvp_method"):
        HessianOperator(p.model, p.loss_fn, (p.x, p.y), hvp_method="fd")
    with pytest.raises(TypeError, match="Module"):
        HessianOperator(lambda x: x, p.loss_fn, (p.x, p.y))
