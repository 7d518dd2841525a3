"""Checks that train two optimizers side by side (``compare``), resume from a checkpoint
(``resume_is_bit_exact``) or count state buffers, on a small MLP or a noisy quadratic."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from helpers import make_mlp, max_rel_diff, regression_batches, train


class Quadratic(nn.Module):
    """``0.5 (x - x*)^T A (x - x*)`` with a random SPD ``A`` (condition ~100), noisy gradients."""

    def __init__(self, dim: int = 20, seed: int = 0, dtype=torch.float32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
        eig = torch.logspace(-1, 1, dim, dtype=torch.float64)
        self.register_buffer("a", (q * eig) @ q.T)
        self.register_buffer("target", torch.randn(dim, generator=g, dtype=torch.float64))
        self.x = nn.Parameter(torch.randn(dim, generator=g, dtype=torch.float64))
        self.w = nn.Parameter(torch.randn(4, dim // 4, generator=g, dtype=torch.float64))
        self.to(dtype)

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        z = torch.cat([self.x, self.w.flatten()]) - torch.cat([self.target, self.target])
        z = z[: self.a.shape[0]] + z[self.a.shape[0] :] + noise
        return 0.5 * z @ self.a @ z


def train_quadratic(model: Quadratic, opt: torch.optim.Optimizer, steps: int, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        noise = 0.1 * torch.randn(model.a.shape[0], generator=g).to(model.a.dtype)
        opt.zero_grad()
        model(noise).backward()
        opt.step()


def compare(
    make_a: Callable,
    make_b: Callable,
    problem: str = "mlp",
    steps: int = 120,
    dtype=torch.float32,
    rng_seed: int | None = None,
) -> float:
    """Max relative parameter difference after training copies with two optimizers."""
    model = make_mlp(0, dtype=dtype) if problem == "mlp" else Quadratic(dtype=dtype)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    for m, make in ((a, make_a), (b, make_b)):
        if rng_seed is not None:
            torch.manual_seed(rng_seed)
        opt = make(m.parameters())
        if problem == "mlp":
            train(m, opt, regression_batches(steps, dtype=dtype))
        else:
            train_quadratic(m, opt, steps)
    return max_rel_diff(a, b)


def resume_is_bit_exact(
    make: Callable, tmp_path, steps: int = 30, use_closure: bool = False
) -> bool:
    """``steps`` steps, save, load into a fresh optimizer and model, ``steps`` more: the same as
    ``2 * steps`` uninterrupted. ``use_closure``: pass the loss closure to ``step`` (SAM, GAM...)."""
    batches = regression_batches(2 * steps)
    torch.manual_seed(0)
    ref = make_mlp()
    train(ref, make(ref.parameters()), batches, use_closure=use_closure)

    torch.manual_seed(0)
    first = make_mlp()
    opt1 = make(first.parameters())
    train(first, opt1, batches[:steps], use_closure=use_closure)
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict()}, tmp_path / "ckpt.pt")
    ckpt = torch.load(tmp_path / "ckpt.pt")
    resumed = make_mlp(seed=123)
    resumed.load_state_dict(ckpt["model"])
    opt2 = make(resumed.parameters())
    opt2.load_state_dict(ckpt["opt"])
    train(resumed, opt2, batches[steps:], use_closure=use_closure)
    return all(torch.equal(p, q) for p, q in zip(ref.parameters(), resumed.parameters()))


def state_buffers(opt: torch.optim.Optimizer, p: torch.Tensor) -> tuple[int, int]:
    """(number of parameter-sized state tensors, number of scalar state tensors) of ``p``."""
    values = [v for k, v in opt.state[p].items() if k != "step" and isinstance(v, torch.Tensor)]
    full = sum(1 for v in values if v.shape == p.shape)
    scalars = sum(1 for v in values if v.ndim == 0)
    return full, scalars


def one_step(opt_factory: Callable, shape=(5, 3)) -> tuple[torch.optim.Optimizer, torch.Tensor]:
    p = torch.zeros(shape, requires_grad=True)
    opt = opt_factory([p])
    p.grad = torch.randn(shape)
    opt.step()
    return opt, p
