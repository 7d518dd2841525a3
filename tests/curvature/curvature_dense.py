"""Dense references for the curvature tests: float64 problems, exact Hessian and Jacobian."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, hessian, jacrev


@dataclass
class Problem:
    model: nn.Module
    loss_fn: object
    x: Tensor
    y: Tensor
    hess: Tensor  # dense Hessian of the mean loss over (x, y), float64


def flat_params(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def unflat_dict(model: nn.Module, flat: Tensor) -> dict[str, Tensor]:
    out, i = {}, 0
    for n, p in model.named_parameters():
        out[n] = flat[i : i + p.numel()].view_as(p)
        i += p.numel()
    return out


def dense_hessian(model: nn.Module, loss_fn, x: Tensor, y: Tensor) -> Tensor:
    def f(flat: Tensor) -> Tensor:
        return loss_fn(functional_call(model, unflat_dict(model, flat), (x,)), y)

    return hessian(f)(flat_params(model))


def dense_jacobian(model: nn.Module, x: Tensor) -> Tensor:
    """J of the flattened outputs w.r.t. the flat parameters: [B*C, P]."""

    def f(flat: Tensor) -> Tensor:
        return functional_call(model, unflat_dict(model, flat), (x,)).reshape(-1)

    return jacrev(f)(flat_params(model))


def make_mlp(seed: int = 0, d_in: int = 6, hidden: int = 10, d_out: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out)).double()


class DenseOperator:
    """A symmetric matrix posing as a curvature operator (one 'parameter' vector)."""

    def __init__(self, mat: torch.Tensor) -> None:
        self.mat = mat
        self.params = [torch.zeros(mat.shape[0], dtype=mat.dtype)]
        self.num_matvecs = 0

    @property
    def dim(self) -> int:
        return self.mat.shape[0]

    def matvec(self, v):
        self.num_matvecs += 1
        return [self.mat @ v[0]]
