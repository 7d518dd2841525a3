"""Small training problems and comparison helpers shared by optimizer tests."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn


def make_mlp(
    seed: int = 0,
    d_in: int = 10,
    hidden: int = 32,
    d_out: int = 5,
    dtype=torch.float32,
    device: str = "cpu",
) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out)).to(
        device=device, dtype=dtype
    )


def regression_batches(
    steps: int,
    seed: int = 1,
    batch: int = 32,
    d_in: int = 10,
    d_out: int = 5,
    dtype=torch.float32,
    device: str = "cpu",
) -> list[tuple[torch.Tensor, ...]]:
    """A fixed stream of noisy minibatches from a random linear teacher."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(d_in, d_out, generator=g)
    out = []
    for _ in range(steps):
        x = torch.randn(batch, d_in, generator=g)
        y = x @ teacher + 0.1 * torch.randn(batch, d_out, generator=g)
        out.append((x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)))
    return out


def train(
    model: nn.Module, opt: torch.optim.Optimizer, batches, scheduler=None, use_closure: bool = False
) -> list[float]:
    losses = []
    for x, y in batches:

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        if use_closure:
            loss = opt.step(closure)
        else:
            loss = closure()
            opt.step()
        losses.append(float(loss.detach()))
        if scheduler is not None:
            scheduler.step()
    return losses


def max_rel_diff(a: nn.Module, b: nn.Module) -> float:
    """max over parameters of ||a - b|| / ||b||."""
    return max(
        ((p.detach().double() - q.detach().double()).norm() / q.detach().double().norm()).item()
        for p, q in zip(a.parameters(), b.parameters())
    )


def run_pair(make_a: Callable, make_b: Callable, steps: int = 200, seed: int = 0, **kw):
    """Train two copies of the same model with two optimizers on the same batches."""
    model = make_mlp(seed, **kw)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    batches = regression_batches(steps, **kw)
    train(a, make_a(a.parameters()), batches)
    train(b, make_b(b.parameters()), batches)
    return a, b
