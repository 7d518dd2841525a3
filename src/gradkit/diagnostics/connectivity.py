"""Linear mode connectivity: the loss along the straight line between two trained models.

For two solutions ``theta_A`` and ``theta_B`` of the same architecture::

    theta(t) = (1 - t) theta_A + t theta_B,     t in [0, 1]
    barrier  = max_t [ L(theta(t)) - ((1 - t) L(theta_A) + t L(theta_B)) ]

The barrier is the height of the loss above the straight line joining the end-point losses
(the definition of Entezari et al., arXiv:2110.06296, and of Git Re-Basin, arXiv:2209.04836);
the two models are *linearly mode connected* when it is about zero. Layer-wise connectivity
(as in "Landscaping Linear Mode Connectivity") interpolates one layer at a time, keeping every
other tensor at ``theta_A``.

Floating-point buffers (BatchNorm running statistics) are interpolated like parameters;
integer buffers (``num_batches_tracked``) are taken from model A. Interpolated BatchNorm
statistics are not the statistics of the interpolated network: re-estimate them (run the
model in train mode over some data, then ``eval()``) for a fair barrier, or use
``renormalize`` below.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from gradkit.curvature._utils import check_positive_int
from gradkit.diagnostics._common import Batch, LossFn, device_of, evaluate, iter_batches
from gradkit.errors import UnknownNameError

#: Default interpolation points: 11 in [0, 1].
DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.linspace(0.0, 1.0, 11))


@dataclass
class InterpolationResult:
    """Losses (and metrics) along ``(1 - t) A + t B``, with the barrier height."""

    alphas: np.ndarray
    losses: np.ndarray
    metrics: np.ndarray | None
    barrier: float
    barrier_alpha: float


def barrier_height(alphas: Sequence[float], losses: Sequence[float]) -> tuple[float, float]:
    """``max_t [L(t) - ((1-t) L(0) + t L(1))]`` and the ``t`` where it is reached.

    ``alphas`` must start at 0 and end at 1 (the two end points).
    """
    a = np.asarray(alphas, dtype=np.float64)
    v = np.asarray(losses, dtype=np.float64)
    if a.ndim != 1 or a.shape != v.shape or a.size < 2:
        raise ValueError("alphas and losses must be 1-D of the same length >= 2")
    if not (np.isclose(a[0], 0.0) and np.isclose(a[-1], 1.0)):
        raise ValueError("alphas must start at 0 and end at 1 to define the barrier")
    gap = v - ((1.0 - a) * v[0] + a * v[-1])
    i = int(np.argmax(gap))
    return float(gap[i]), float(a[i])


def _check_compatible(sd_a: dict[str, Tensor], sd_b: dict[str, Tensor]) -> None:
    if sd_a.keys() != sd_b.keys():
        diff = sorted(set(sd_a) ^ set(sd_b))
        raise ValueError(f"models have different state_dict keys: {diff[:5]}")
    for k in sd_a:
        if sd_a[k].shape != sd_b[k].shape:
            raise ValueError(
                f"{k}: shape {tuple(sd_a[k].shape)} in model A vs {tuple(sd_b[k].shape)} in B"
            )


def interpolate_state_dict(
    sd_a: dict[str, Tensor],
    sd_b: dict[str, Tensor],
    t: float,
    keys: Iterable[str] | None = None,
) -> dict[str, Tensor]:
    """``(1 - t) sd_a + t sd_b`` on floating tensors (only ``keys`` if given; rest from A)."""
    _check_compatible(sd_a, sd_b)
    chosen = set(sd_a) if keys is None else set(keys)
    out = {}
    for k, va in sd_a.items():
        vb = sd_b[k]
        if k in chosen and torch.is_floating_point(va):
            out[k] = torch.lerp(va, vb.to(va.dtype), float(t))
        else:
            out[k] = va.clone()
    return out


@torch.no_grad()
def renormalize(model: nn.Module, data: Batch | Iterable[Batch], max_batches: int = 10) -> None:
    """Re-estimate BatchNorm running statistics of ``model`` on ``data`` (no-op without BN)."""
    check_positive_int("max_batches", max_batches)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    device = device_of(model)
    for i, (x, _) in enumerate(iter_batches(data)):
        if i >= max_batches:
            break
        model(x.to(device))
    model.train(was_training)


def linear_interpolation(
    model_a: nn.Module,
    model_b: nn.Module,
    loss_fn: LossFn,
    data: Batch | Iterable[Batch],
    alphas: Sequence[float] | np.ndarray = DEFAULT_ALPHAS,
    metric_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    keys: Iterable[str] | None = None,
    reset_bn: bool = False,
) -> InterpolationResult:
    """Loss along the line from ``model_a`` (``t=0``) to ``model_b`` (``t=1``).

    Args:
        keys: state_dict keys to interpolate (default all); the others stay at model A.
        reset_bn: re-estimate BatchNorm statistics on ``data`` at every ``t``.

    The models are left unchanged; the evaluation runs on a copy in ``model_a``'s mode.
    """
    grid = np.asarray(alphas, dtype=np.float64)
    if grid.ndim != 1 or grid.size < 2:
        raise ValueError("alphas must be a 1-D sequence of at least 2 numbers")
    if not np.all(np.isfinite(grid)):
        raise ValueError("alphas must be finite")
    sd_a = {k: v.detach() for k, v in model_a.state_dict().items()}
    sd_b = {k: v.detach() for k, v in model_b.state_dict().items()}
    _check_compatible(sd_a, sd_b)
    if keys is not None:
        keys = list(keys)
        for k in keys:
            if k not in sd_a:
                raise UnknownNameError("state_dict key", k, sd_a)
    work = copy.deepcopy(model_a)
    losses, metrics = np.empty(grid.size), np.empty(grid.size)
    for i, t in enumerate(grid):
        work.load_state_dict(interpolate_state_dict(sd_a, sd_b, float(t), keys))
        if reset_bn:
            renormalize(work, data)
        losses[i], m = evaluate(work, loss_fn, data, metric_fn)
        metrics[i] = np.nan if m is None else m
    if np.isclose(grid[0], 0.0) and np.isclose(grid[-1], 1.0):
        barrier, where = barrier_height(grid, losses)
    else:
        barrier, where = float("nan"), float("nan")
    return InterpolationResult(grid, losses, metrics if metric_fn else None, barrier, where)


def layer_groups(model: nn.Module) -> dict[str, list[str]]:
    """state_dict keys grouped by the module that owns them (e.g. ``"0"``, ``"fc2"``)."""
    groups: dict[str, list[str]] = {}
    for k in model.state_dict():
        owner = k.rsplit(".", 1)[0] if "." in k else ""
        groups.setdefault(owner, []).append(k)
    return groups


def layerwise_interpolation(
    model_a: nn.Module,
    model_b: nn.Module,
    loss_fn: LossFn,
    data: Batch | Iterable[Batch],
    alphas: Sequence[float] | np.ndarray = DEFAULT_ALPHAS,
    groups: dict[str, list[str]] | None = None,
    metric_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> dict[str, InterpolationResult]:
    """Interpolate one layer at a time (others fixed at model A); one result per layer."""
    groups = layer_groups(model_a) if groups is None else groups
    return {
        name: linear_interpolation(model_a, model_b, loss_fn, data, alphas, metric_fn, keys)
        for name, keys in groups.items()
    }
