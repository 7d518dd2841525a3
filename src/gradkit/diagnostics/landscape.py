"""Loss landscapes: 1-D and 2-D slices of the loss around a point in parameter space.

Li et al., "Visualizing the Loss Landscape of Neural Nets", arXiv:1712.09913.
The loss is evaluated on a grid around the trained parameters ``theta``::

    f(a)    = L(theta + a * d)                 (1-D slice)
    f(a, b) = L(theta + a * d1 + b * d2)       (2-D slice)

Random directions are drawn from N(0, I) and *filter-normalized* (the paper's Sec. 4): for
every filter ``i`` of a weight (slice ``[i]`` along the output dimension of a conv or linear
weight), ``d_i <- d_i / ||d_i|| * ||theta_i||``, so that the direction has the scale of the
weights it perturbs and plots of networks with different weight scales can be compared.
Following the paper, 1-D parameters (biases, normalization gains) get a zero direction by
default (``ignore_1d=True``).

Directions along Hessian eigenvectors ("Loss Landscape Analysis") are available with
:func:`hessian_directions`; they are not affected by scale-invariant layers (BatchNorm), which
the paper shows can distort filter-normalized plots.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from gradkit.curvature._utils import check_positive_int
from gradkit.diagnostics._common import (
    Batch,
    LossFn,
    as_grid,
    check_like,
    evaluate,
    perturbed,
    resolve_params,
)
from gradkit.errors import invalid_value

#: Default grid of step sizes: 21 points in [-1, 1].
DEFAULT_GRID: tuple[float, ...] = tuple(float(a) for a in np.linspace(-1.0, 1.0, 21))

_NORMS = ("filter", "layer", "none")


def normalize_direction(
    direction: Sequence[Tensor],
    params: Sequence[Tensor],
    norm: str = "filter",
    ignore_1d: bool = True,
) -> list[Tensor]:
    """Rescale ``direction`` to the scale of ``params``.

    Args:
        direction: tensors shaped like ``params``.
        params: the reference weights ``theta``.
        norm: ``"filter"`` (per output filter/row, Li et al.), ``"layer"`` (per tensor) or
            ``"none"``.
        ignore_1d: set the direction of 1-D parameters (biases, norm gains) to zero.
    """
    if norm not in _NORMS:
        raise invalid_value("norm", norm, f"one of {_NORMS}")
    direction = check_like(direction, params, "direction")
    out = []
    for d, p in zip(direction, params):
        p = p.detach()
        if p.dim() <= 1 and ignore_1d:
            out.append(torch.zeros_like(p))
            continue
        if norm == "none":
            out.append(d.clone())
        elif norm == "layer" or p.dim() <= 1:
            out.append(d * (p.norm() / d.norm().clamp_min(1e-12)))
        else:
            d2 = d.reshape(d.shape[0], -1)
            p2 = p.reshape(p.shape[0], -1)
            scale = p2.norm(dim=1, keepdim=True) / d2.norm(dim=1, keepdim=True).clamp_min(1e-12)
            out.append((d2 * scale).reshape(d.shape))
    return out


def random_direction(
    model: nn.Module,
    params: Sequence[Tensor] | None = None,
    norm: str = "filter",
    ignore_1d: bool = True,
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """A Gaussian random direction, normalized by :func:`normalize_direction`."""
    params = resolve_params(model, params)
    raw = [
        torch.randn(p.shape, generator=generator, dtype=p.dtype, device="cpu").to(p.device)
        for p in params
    ]
    return normalize_direction(raw, params, norm=norm, ignore_1d=ignore_1d)


def hessian_directions(
    model: nn.Module,
    loss_fn: LossFn,
    data: Batch | Iterable[Batch],
    k: int = 2,
    params: Sequence[Tensor] | None = None,
    max_samples: int | None = None,
) -> tuple[list[float], list[list[Tensor]]]:
    """Top-``k`` Hessian eigenpairs to use as landscape axes ("Loss Landscape Analysis").

    Returns ``(eigenvalues, eigenvectors)``; each eigenvector is a list of unit-norm (over all
    tensors together) tensors shaped like ``params``. Uses the shared curvature engine.
    """
    check_positive_int("k", k)
    from gradkit.curvature import HessianOperator, top_eigenpairs

    params = resolve_params(model, params)
    op = HessianOperator(model, loss_fn, data, params=params, max_samples=max_samples)
    eigvals, eigvecs = top_eigenpairs(op, k=k)
    vals = [float(v) for v in eigvals]
    return vals, [[t.detach().clone() for t in v] for v in eigvecs]


@dataclass
class Slice1D:
    """Loss (and optional metric) along ``theta + alpha * d``."""

    alphas: np.ndarray
    losses: np.ndarray
    metrics: np.ndarray | None = None


@dataclass
class Slice2D:
    """Loss (and optional metric) on the grid ``theta + alphas[i] d1 + betas[j] d2``.

    ``losses[j, i]`` is the loss at ``(alphas[i], betas[j])`` (row = beta, as matplotlib's
    ``contour(alphas, betas, losses)`` expects).
    """

    alphas: np.ndarray
    betas: np.ndarray
    losses: np.ndarray
    metrics: np.ndarray | None = None


def loss_slice_1d(
    model: nn.Module,
    loss_fn: LossFn,
    data: Batch | Iterable[Batch],
    direction: Sequence[Tensor],
    alphas: Sequence[float] | np.ndarray = DEFAULT_GRID,
    params: Sequence[Tensor] | None = None,
    metric_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Slice1D:
    """Evaluate ``L(theta + alpha * direction)`` for each ``alpha``.

    The model is evaluated in its current mode (call ``model.eval()`` first for models with
    BatchNorm or dropout). Parameters are restored exactly afterwards.
    """
    params = resolve_params(model, params)
    direction = check_like(direction, params, "direction")
    grid = as_grid(alphas, "alphas")
    losses, metrics = np.empty(grid.size), np.empty(grid.size)
    for i, a in enumerate(grid):
        with perturbed(params, [float(a) * d for d in direction]):
            losses[i], m = evaluate(model, loss_fn, data, metric_fn)
        metrics[i] = np.nan if m is None else m
    return Slice1D(grid, losses, metrics if metric_fn is not None else None)


def loss_slice_2d(
    model: nn.Module,
    loss_fn: LossFn,
    data: Batch | Iterable[Batch],
    direction1: Sequence[Tensor],
    direction2: Sequence[Tensor],
    alphas: Sequence[float] | np.ndarray = DEFAULT_GRID,
    betas: Sequence[float] | np.ndarray | None = None,
    params: Sequence[Tensor] | None = None,
    metric_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Slice2D:
    """Evaluate ``L(theta + a * direction1 + b * direction2)`` on the grid ``alphas x betas``.

    ``betas`` defaults to ``alphas``. Cost: ``len(alphas) * len(betas)`` passes over ``data``.
    """
    params = resolve_params(model, params)
    d1 = check_like(direction1, params, "direction1")
    d2 = check_like(direction2, params, "direction2")
    ga = as_grid(alphas, "alphas")
    gb = ga if betas is None else as_grid(betas, "betas")
    losses = np.empty((gb.size, ga.size))
    metrics = np.empty((gb.size, ga.size))
    for j, b in enumerate(gb):
        for i, a in enumerate(ga):
            delta = [float(a) * x + float(b) * y for x, y in zip(d1, d2)]
            with perturbed(params, delta):
                losses[j, i], m = evaluate(model, loss_fn, data, metric_fn)
            metrics[j, i] = np.nan if m is None else m
    return Slice2D(ga, gb, losses, metrics if metric_fn is not None else None)


def random_landscape_2d(
    model: nn.Module,
    loss_fn: LossFn,
    data: Batch | Iterable[Batch],
    alphas: Sequence[float] | np.ndarray = DEFAULT_GRID,
    norm: str = "filter",
    seed: int = 0,
    params: Sequence[Tensor] | None = None,
    metric_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Slice2D:
    """2-D slice along two filter-normalized random directions (Li et al., Fig. 1)."""
    params = resolve_params(model, params)
    gen = torch.Generator().manual_seed(seed)
    d1 = random_direction(model, params, norm=norm, generator=gen)
    d2 = random_direction(model, params, norm=norm, generator=gen)
    return loss_slice_2d(model, loss_fn, data, d1, d2, alphas, params=params, metric_fn=metric_fn)


def hessian_landscape_2d(
    model: nn.Module,
    loss_fn: LossFn,
    data: Batch | Iterable[Batch],
    alphas: Sequence[float] | np.ndarray = DEFAULT_GRID,
    params: Sequence[Tensor] | None = None,
    max_samples: int | None = None,
    metric_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> tuple[Slice2D, list[float]]:
    """2-D slice along the top two Hessian eigenvectors; also returns the eigenvalues.

    The eigenvectors have unit norm, so ``alphas`` are distances in parameter space.
    """
    params = resolve_params(model, params)
    vals, vecs = hessian_directions(model, loss_fn, data, 2, params, max_samples)
    res = loss_slice_2d(
        model, loss_fn, data, vecs[0], vecs[1], alphas, params=params, metric_fn=metric_fn
    )
    return res, vals
