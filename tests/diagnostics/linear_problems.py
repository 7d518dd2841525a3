"""Linear least-squares problems for the diagnostics tests: their Hessian is known exactly."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def linear_regression(
    seed: int, n: int, d: int, scale: tuple[float, float]
) -> tuple[nn.Module, Tensor, Tensor]:
    """A bias-free ``nn.Linear(d, 1)`` (float64) with ``n`` Gaussian examples and targets.

    Feature ``j`` is scaled by ``linspace(*scale, d)[j]``, which spreads the eigenvalues of the
    MSE Hessian ``2 X^T X / n`` (the same for every weight).
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(*scale, d).double()
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    torch.manual_seed(seed)
    model = nn.Linear(d, 1, bias=False).double()
    return model, x, y
