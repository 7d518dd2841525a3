"""Small problems with closed forms, and a distribution-free concentration check."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class Params(nn.Module):
    """A model whose output is its own parameters, flattened: two tensors, d = 7 scalars."""

    def __init__(self, theta: Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(theta[:4].reshape(2, 2).clone())
        self.b = nn.Parameter(theta[4:].clone())

    def forward(self, x: Tensor) -> Tensor:  # the input is ignored
        return torch.cat([self.a.reshape(-1), self.b])


def quadratic(d: int = 7, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """(A, c, theta) for L(theta) = 1/2 theta^T A theta + c^T theta, A symmetric positive."""
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(d, d, generator=g, dtype=torch.float64)
    a = m @ m.T / d + torch.eye(d, dtype=torch.float64)
    c = torch.randn(d, generator=g, dtype=torch.float64)
    theta = torch.randn(d, generator=g, dtype=torch.float64)
    return a, c, theta


def quadratic_loss(a: Tensor, c: Tensor):
    def loss_fn(out: Tensor, _target: object) -> Tensor:
        return 0.5 * out @ a @ out + c @ out

    return loss_fn


def median_of_means_bound(samples: Tensor, groups: int) -> tuple[Tensor, float]:
    """Median over ``groups`` equal groups of the per-group means (columnwise), and the failure
    probability per column of ``|median - mean| > 2 sigma / sqrt(group size)``.

    By Chebyshev a group mean misses by more than 2 of its standard deviations with probability
    <= 1/4; the median misses only if at least half the groups do, which by Hoeffding has
    probability <= exp(-2 groups (1/2 - 1/4)^2) = exp(-groups / 8). Distribution-free: only the
    (closed-form) variance enters.
    """
    n = samples.shape[0] // groups * groups
    means = samples[:n].reshape(groups, n // groups, *samples.shape[1:]).mean(1)
    return means.median(0).values, math.exp(-groups / 8)
