"""Intrinsic dimension of an objective by training in a random subspace.

Li, Farkhoor, Liu, Yosinski, "Measuring the Intrinsic Dimension of Objective Landscapes",
arXiv:1804.08838. Instead of the ``D`` parameters, train ``d`` coordinates ``z``::

    theta = theta_0 + P z,     P in R^{D x d} random and fixed,  z_0 = 0

``theta_0`` is the model's initialisation and the columns of ``P`` are independent Gaussian
vectors normalised to unit length (the paper's dense projection). The intrinsic dimension
``d_int90`` is the smallest tested ``d`` whose performance reaches ``threshold`` (90%) of the
performance of training all ``D`` parameters with the same recipe.

Only the dense projection is implemented: memory is ``D * d`` numbers, refused above
``max_projection_numel`` (the paper's sparse and Fastfood projections scale further).
"""

from __future__ import annotations

import copy
import itertools
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from gradkit.curvature._utils import (
    check_positive,
    check_positive_int,
    check_scalar_loss,
    is_real,
)
from gradkit.diagnostics._common import Batch, LossFn, iter_batches
from gradkit.errors import invalid_value

_OPTIMIZERS = ("adam", "sgd", "lbfgs")


def random_projection(
    num_params: int,
    dim: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Dense ``[num_params, dim]`` Gaussian matrix with unit-length columns."""
    check_positive_int("num_params", num_params)
    check_positive_int("dim", dim)
    gen = torch.Generator().manual_seed(seed)
    p = torch.randn(num_params, dim, generator=gen, dtype=torch.float64)
    p /= p.norm(dim=0, keepdim=True)
    return p.to(dtype=dtype, device=device)


def _check_training(steps: int, lr: float, optimizer: str) -> None:
    """The arguments of the inner training runs, checked before any of them starts."""
    if optimizer not in _OPTIMIZERS:
        raise invalid_value("optimizer", optimizer, f"one of {_OPTIMIZERS}")
    check_positive_int("steps", steps)
    check_positive("lr", lr)


def _batches(data: Batch | Iterable[Batch]) -> Iterable[Batch]:
    batches = list(iter_batches(data))
    if not batches:
        raise ValueError("data is empty: no examples were found")
    return itertools.cycle(batches)


def train_in_subspace(
    model: nn.Module,
    loss_fn: LossFn,
    data: Batch | Iterable[Batch],
    dim: int | None,
    steps: int = 500,
    lr: float = 1e-2,
    optimizer: str = "adam",
    seed: int = 0,
    max_projection_numel: int = 200_000_000,
) -> nn.Module:
    """Train a copy of ``model`` in a random ``dim``-dimensional subspace around its weights.

    ``dim=None`` trains all parameters directly (the baseline). Buffers are not trained.
    ``data`` batches are cycled, one per step (``"lbfgs"`` does up to 20 evaluations a step).

    Returns:
        The trained copy, with ``theta_0 + P z`` loaded as its parameters.
    """
    _check_training(steps, lr, optimizer)
    check_positive_int("dim", dim, allow_none=True)
    check_positive_int("max_projection_numel", max_projection_numel)
    work = copy.deepcopy(model)
    names = [n for n, p in work.named_parameters() if p.requires_grad]
    if not names:
        raise ValueError("the model has no parameters with requires_grad=True to train")
    base = {n: p.detach().clone() for n, p in work.named_parameters() if p.requires_grad}
    shapes = [base[n].shape for n in names]
    sizes = [base[n].numel() for n in names]
    theta0 = torch.cat([base[n].flatten() for n in names])
    num = theta0.numel()
    if dim is None:
        z = theta0.clone().requires_grad_(True)
        proj = None
    else:
        if num * dim > max_projection_numel:
            raise ValueError(
                f"dense projection of {num} x {dim} numbers exceeds max_projection_numel="
                f"{max_projection_numel}; use a smaller dim or model"
            )
        proj = random_projection(num, dim, seed, theta0.dtype, theta0.device)
        z = torch.zeros(dim, dtype=theta0.dtype, device=theta0.device, requires_grad=True)

    def theta_of(zz: Tensor) -> Tensor:
        return zz if proj is None else theta0 + proj @ zz

    def as_dict(flat: Tensor) -> dict[str, Tensor]:
        return {n: t.reshape(s) for n, s, t in zip(names, shapes, flat.split(sizes))}

    device = theta0.device
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam([z], lr=lr)
    elif optimizer == "sgd":
        opt = torch.optim.SGD([z], lr=lr, momentum=0.9)
    else:
        opt = torch.optim.LBFGS([z], lr=lr, line_search_fn="strong_wolfe")
    stream = _batches(data)
    for _ in range(steps):
        x, y = next(stream)
        x, y = x.to(device), y.to(device)

        def closure(x: Tensor = x, y: Tensor = y) -> Tensor:
            opt.zero_grad()
            out = functional_call(work, as_dict(theta_of(z)), (x,))
            loss = check_scalar_loss(loss_fn(out, y))
            loss.backward()
            return loss

        opt.step(closure)
    with torch.no_grad():
        final = as_dict(theta_of(z))
        for n, p in work.named_parameters():
            if n in final:
                p.copy_(final[n])
    return work


@dataclass
class IntrinsicDimensionResult:
    """Performance against subspace dimension; ``d_int`` is ``None`` if never reached."""

    dims: list[int]
    performance: list[float]
    full_performance: float
    threshold: float
    d_int: int | None


def intrinsic_dimension(
    model: nn.Module,
    loss_fn: LossFn,
    train_data: Batch | Iterable[Batch],
    performance_fn: Callable[[nn.Module], float],
    dims: Sequence[int],
    threshold: float = 0.9,
    full_performance: float | None = None,
    steps: int = 500,
    lr: float = 1e-2,
    optimizer: str = "adam",
    seed: int = 0,
) -> IntrinsicDimensionResult:
    """Smallest ``d`` in ``dims`` at which subspace training reaches ``threshold`` x full.

    Args:
        performance_fn: ``model -> float``, higher is better and positive (e.g. test accuracy).
        full_performance: baseline; by default all parameters are trained with the same
            ``steps``, ``lr`` and ``optimizer`` and scored with ``performance_fn``.
        threshold: fraction of the baseline to reach, in ``(0, 1]`` (paper: 0.9).
    """
    if not (is_real(threshold) and 0.0 < threshold <= 1.0):
        raise invalid_value("threshold", threshold, "in (0, 1]")
    check_positive("full_performance", full_performance, allow_none=True)
    given = list(dims)
    try:
        ints = sorted(operator.index(d) for d in given)
    except TypeError:
        ints = []
    if not ints or ints[0] < 1:
        raise invalid_value("dims", given, "a non-empty sequence of positive integers")
    dims = ints
    _check_training(steps, lr, optimizer)
    kw = {"steps": steps, "lr": lr, "optimizer": optimizer}
    if full_performance is None:
        full_performance = float(
            performance_fn(train_in_subspace(model, loss_fn, train_data, None, **kw))
        )
    perf = [
        float(performance_fn(train_in_subspace(model, loss_fn, train_data, d, seed=seed, **kw)))
        for d in dims
    ]
    target = threshold * full_performance
    reached = [d for d, p in zip(dims, perf) if p >= target]
    return IntrinsicDimensionResult(
        dims, perf, float(full_performance), threshold, reached[0] if reached else None
    )
