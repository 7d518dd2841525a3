"""A scale-invariant weight (a linear layer followed by batch normalization) for AdamP / SGDP tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from helpers import single_thread


@single_thread()
def norm_growth(make: Callable, lr: float, steps: int = 200) -> tuple[float, float]:
    """Train ``w`` of ``tanh(batchnorm(x w^T)) @ head``; return (||w_end|| / ||w_0||, final loss)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 6, generator=g).requires_grad_(True)
    head = torch.randn(8, 3, generator=g)
    x, y = torch.randn(64, 6, generator=g), torch.randn(64, 3, generator=g)
    opt = make([w], lr)
    n0 = float(w.detach().norm())
    loss = torch.zeros(())
    for _ in range(steps):
        opt.zero_grad()
        h = x @ w.T
        h = (h - h.mean(0)) / h.std(0)  # batch normalization: every row of w is scale-invariant
        loss = nn.functional.mse_loss(torch.tanh(h) @ head, y)
        loss.backward()
        opt.step()
    return float(w.detach().norm()) / n0, float(loss.detach())
