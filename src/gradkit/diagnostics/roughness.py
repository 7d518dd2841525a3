"""Roughness index (RI) of a loss landscape from 1-D slices along random directions.

Wu, Jian, Du, Chen, Zhou, "Roughness Index for Loss Landscapes of Neural Network Models of
Partial Differential Equations", arXiv:2103.11069. The paper's abstract defines the
index as built "on the mean and variance of the (normalized) total variation for
one-dimensional functions projected on randomly sampled directions". Written out, for the
slices ``f_k(a) = L(theta + a d_k)``, ``k = 1..K``, sampled on a grid ``a_0 < ... < a_n``:

    TV(f_k)   = sum_i |f_k(a_{i+1}) - f_k(a_i)|                  (total variation)
    nu_k      = TV(f_k) / (max_i f_k(a_i) - min_i f_k(a_i))      (normalized total variation)
    RI        = Var_k[nu_k] / (E_k[nu_k])^2                      (roughness index)

``nu`` does not depend on the scale or offset of the loss: it is 1 for a monotone slice, 2 for
a single well (a convex slice through an interior minimum), and grows with every extra
oscillation. RI is the squared coefficient of variation of ``nu`` over directions: 0 when
every direction looks alike (e.g. a quadratic bowl centred at its minimum), large when some
directions are much rougher than others. Mean and variance are reported as well.

Note: the full text of the paper was not available when this was written; the normalization
(by the range of the slice) and the ratio ``Var / Mean^2`` are our reading of the abstract,
recorded in docs/diagnostics.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from gradkit.curvature._utils import check_int_at_least
from gradkit.diagnostics._common import Batch, LossFn, as_grid, resolve_params
from gradkit.diagnostics.landscape import loss_slice_1d, random_direction

#: Default grid of step sizes for the roughness index: 41 points in [-1, 1].
DEFAULT_RI_GRID: tuple[float, ...] = tuple(float(a) for a in np.linspace(-1.0, 1.0, 41))


def total_variation(values: Sequence[float] | np.ndarray) -> float:
    """Discrete total variation ``sum_i |f_{i+1} - f_i|`` of sampled values."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size < 2:
        raise ValueError("values must be a 1-D sequence of at least 2 numbers")
    if not np.all(np.isfinite(v)):
        raise ValueError("values must be finite (the loss diverged on the slice?)")
    return float(np.abs(np.diff(v)).sum())


def normalized_total_variation(values: Sequence[float] | np.ndarray) -> float:
    """``TV(f) / (max f - min f)``: 1 if monotone, 2 for a single well; ``nan`` if constant."""
    v = np.asarray(values, dtype=np.float64)
    tv = total_variation(v)
    span = float(v.max() - v.min())
    if span <= 0.0:
        return float("nan")
    return tv / span


@dataclass
class RoughnessResult:
    """Roughness index and its ingredients."""

    index: float
    mean: float
    variance: float
    normalized_tv: np.ndarray
    alphas: np.ndarray
    slices: np.ndarray


def roughness_index_from_slices(
    slices: Sequence[Sequence[float]] | np.ndarray, alphas: Sequence[float] | None = None
) -> RoughnessResult:
    """RI from sampled 1-D slices, one row per direction (at least 2 directions).

    Constant slices (zero range) are skipped; if all are constant, ``ValueError``.
    """
    s = np.asarray(slices, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] < 2 or s.shape[1] < 3:
        raise ValueError("slices must be a 2-D array with >= 2 directions and >= 3 grid points")
    nu = np.array([normalized_total_variation(row) for row in s])
    ok = np.isfinite(nu)
    if ok.sum() < 2:
        raise ValueError("fewer than 2 slices are non-constant: the roughness index is undefined")
    mean = float(nu[ok].mean())
    var = float(nu[ok].var())
    grid = np.arange(s.shape[1], dtype=np.float64) if alphas is None else np.asarray(alphas)
    return RoughnessResult(var / mean**2, mean, var, nu, grid, s)


def roughness_index(
    model: nn.Module,
    loss_fn: LossFn,
    data: Batch | Iterable[Batch],
    num_directions: int = 10,
    alphas: Sequence[float] | np.ndarray = DEFAULT_RI_GRID,
    norm: str = "filter",
    seed: int = 0,
    params: Sequence[Tensor] | None = None,
    direction_fn: Callable[[torch.Generator], list[Tensor]] | None = None,
) -> RoughnessResult:
    """Roughness index of the loss around the model's current parameters.

    Args:
        num_directions: number ``K >= 2`` of random directions.
        alphas: grid of step sizes along each direction.
        norm: direction normalization, see :func:`~gradkit.diagnostics.landscape.random_direction`.
        direction_fn: optional ``generator -> direction`` to draw directions differently.
    """
    check_int_at_least("num_directions", num_directions, 2)
    if as_grid(alphas, "alphas").size < 3:
        raise ValueError("alphas must have at least 3 grid points for a roughness index")
    params = resolve_params(model, params)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(num_directions):
        d = (
            direction_fn(gen)
            if direction_fn is not None
            else random_direction(model, params, norm=norm, generator=gen)
        )
        rows.append(loss_slice_1d(model, loss_fn, data, d, alphas, params=params).losses)
    return roughness_index_from_slices(np.stack(rows), alphas)
