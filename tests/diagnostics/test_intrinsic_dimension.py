"""Intrinsic dimension (Li et al., arXiv:1804.08838) on a problem whose answer is known."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradkit.diagnostics.intrinsic_dimension import (
    intrinsic_dimension,
    random_projection,
    train_in_subspace,
)


def _rank_k_regression(k: int, n_features: int = 30, n: int = 200, seed: int = 0):
    """Realizable least squares whose loss depends on the weights through k directions only."""
    gen = torch.Generator().manual_seed(seed)
    basis = torch.randn(n_features, k, generator=gen, dtype=torch.float64)
    x = torch.randn(n, k, generator=gen, dtype=torch.float64) @ basis.T
    w_star = torch.randn(n_features, 1, generator=gen, dtype=torch.float64)
    return x, x @ w_star


def test_intrinsic_dimension_of_a_rank_k_problem_is_k():
    k = 5
    x, y = _rank_k_regression(k)
    torch.manual_seed(0)
    model = nn.Linear(30, 1, bias=False).double()
    with torch.no_grad():
        loss0 = float(F.mse_loss(model(x), y))

    def performance(m: nn.Module) -> float:  # fraction of the initial loss removed
        with torch.no_grad():
            return 1.0 - float(F.mse_loss(m(x), y)) / loss0

    res = intrinsic_dimension(
        model,
        F.mse_loss,
        (x, y),
        performance,
        dims=[1, 2, 3, 4, 5, 6, 8],
        threshold=0.999,
        steps=5,
        lr=1.0,
        optimizer="lbfgs",
    )
    assert res.full_performance == pytest.approx(1.0, abs=1e-9)
    assert res.d_int == k
    assert max(res.performance[: k - 1]) < 0.999
    assert min(res.performance[k - 1 :]) > 1 - 1e-9
    # below k, each d reaches the best loss of its subspace, computed in closed form
    w0 = model.weight.detach().T
    for d, perf in zip(res.dims, res.performance):
        proj = random_projection(30, d, seed=0, dtype=torch.float64)
        z = torch.linalg.lstsq(x @ proj, y - x @ w0).solution
        best = float(((x @ (w0 + proj @ z) - y) ** 2).mean())
        assert perf == pytest.approx(1.0 - best / loss0, abs=1e-7)


def test_subspace_training_stays_in_the_subspace():
    x, y = _rank_k_regression(3, n_features=8)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    theta0 = torch.cat([p.detach().flatten() for p in model.parameters()])
    trained = train_in_subspace(model, F.mse_loss, (x, y), dim=3, steps=50, lr=0.05, seed=7)
    theta = torch.cat([p.detach().flatten() for p in trained.parameters()])
    proj = random_projection(theta0.numel(), 3, seed=7, dtype=torch.float64)
    z = torch.linalg.lstsq(proj, (theta - theta0).unsqueeze(1)).solution
    torch.testing.assert_close(proj @ z, (theta - theta0).unsqueeze(1), rtol=1e-10, atol=1e-12)
    assert float((theta - theta0).norm()) > 1e-3  # it did move
    # the original model is untouched
    torch.testing.assert_close(
        torch.cat([p.detach().flatten() for p in model.parameters()]), theta0
    )
    # columns of the projection have unit length
    torch.testing.assert_close(proj.norm(dim=0), torch.ones(3, dtype=torch.float64))


def test_errors():
    model = nn.Linear(3, 1)
    data = (torch.zeros(4, 3), torch.zeros(4, 1))
    with pytest.raises(ValueError, match="optimizer"):
        train_in_subspace(model, F.mse_loss, data, 2, optimizer="rmsprop")
    with pytest.raises(ValueError, match="dim"):
        train_in_subspace(model, F.mse_loss, data, 0)
    with pytest.raises(ValueError, match="max_projection_numel"):
        train_in_subspace(model, F.mse_loss, data, 100, max_projection_numel=10)
    with pytest.raises(ValueError, match="threshold"):
        intrinsic_dimension(model, F.mse_loss, data, lambda m: 1.0, [1], threshold=1.5)
    with pytest.raises(ValueError, match="dims"):
        intrinsic_dimension(model, F.mse_loss, data, lambda m: 1.0, [])
