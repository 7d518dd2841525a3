"""Fixtures for the curvature tests: small float64 problems with exact dense Hessians."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvature.curvature_dense import Problem, dense_hessian, make_mlp
from helpers import single_threaded_tests  # noqa: F401  (autouse: one intra-op thread)


@pytest.fixture
def ce_problem() -> Problem:
    model = make_mlp(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    loss_fn = nn.functional.cross_entropy
    return Problem(model, loss_fn, x, y, dense_hessian(model, loss_fn, x, y))


@pytest.fixture
def mse_problem() -> Problem:
    model = make_mlp(2, d_out=2)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(30, 6, generator=g, dtype=torch.float64)
    y = torch.randn(30, 2, generator=g, dtype=torch.float64)
    loss_fn = nn.functional.mse_loss
    return Problem(model, loss_fn, x, y, dense_hessian(model, loss_fn, x, y))
