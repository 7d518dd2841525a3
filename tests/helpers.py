"""Small training problems and comparison helpers shared by optimizer tests."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread inside the block (tiny tensors: more threads only add contention)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def single_threaded_tests() -> Iterator[None]:
    """Each test on one intra-op thread: avoids oversubscription on a loaded 2-core runner.

    Autouse in every test module that imports it (``from helpers import single_threaded_tests``).
    """
    with single_thread():
        yield


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


def mse_closure(
    opt: torch.optim.Optimizer, model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> Callable[[], torch.Tensor]:
    """The closure ``opt.step`` takes: zero the gradients, MSE loss of ``model`` on (x, y), backward."""

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    return closure


def grad_at(
    model: nn.Module, point: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> list[torch.Tensor]:
    """The MSE-loss gradient at parameters ``point`` (copied into ``model``) on (x, y)."""
    params = list(model.parameters())
    with torch.no_grad():
        for p, v in zip(params, point):
            p.copy_(v)
    loss = nn.functional.mse_loss(model(x), y)
    return [g.detach() for g in torch.autograd.grad(loss, params)]


def train(
    model: nn.Module, opt: torch.optim.Optimizer, batches, scheduler=None, use_closure: bool = False
) -> list[float]:
    losses = []
    for x, y in batches:
        closure = mse_closure(opt, model, x, y)
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
