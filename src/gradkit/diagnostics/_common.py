"""Shared plumbing for the diagnostics: parameter lists, data batches, loss evaluation.

Conventions used by every diagnostic in this package:

* ``loss_fn(outputs, targets) -> Tensor`` returns the MEAN loss of a batch (a 0-d tensor),
  like ``torch.nn.functional.cross_entropy`` with its default reduction.
* ``data`` is either one batch ``(inputs, targets)`` or an iterable of such batches (a
  ``DataLoader``, a list). Losses over several batches are averaged weighted by batch size.
* ``params`` is an optional list of parameters of the model; ``None`` means every parameter
  with ``requires_grad``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from gradkit.curvature._utils import check_scalar_loss

LossFn = Callable[[Tensor, Tensor], Tensor]
Batch = tuple[Tensor, Tensor]


def resolve_params(model: nn.Module, params: Sequence[Tensor] | None) -> list[Tensor]:
    """Return ``params`` as a list, or every trainable parameter of ``model`` if ``None``."""
    if params is None:
        out = [p for p in model.parameters() if p.requires_grad]
    else:
        out = list(params)
        own = {id(p) for p in model.parameters()}
        for p in out:
            if id(p) not in own:
                raise ValueError("params must be parameters of the model")
    if not out:
        raise ValueError("the model has no parameters with requires_grad=True to analyse")
    return out


def iter_batches(data: Batch | Iterable[Batch]) -> Iterator[Batch]:
    """Yield ``(inputs, targets)`` batches from one batch or an iterable of batches."""
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and isinstance(data[0], Tensor)
        and isinstance(data[1], Tensor)
    ):
        yield data[0], data[1]
        return
    if isinstance(data, Tensor):
        raise TypeError(
            "data must be (inputs, targets) or an iterable of such batches, got a Tensor"
        )
    for batch in data:
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise TypeError("each batch must be a pair (inputs, targets)")
        yield batch[0], batch[1]


def device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loss_fn: LossFn,
    data: Batch | Iterable[Batch],
    metric_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> tuple[float, float | None]:
    """Mean loss (and mean metric) of ``model`` over ``data``, weighted by batch size.

    In training mode, buffers (BatchNorm running statistics) are restored afterwards, so
    evaluating never changes the model.
    """
    device = device_of(model)
    saved = [(b, b.clone()) for b in model.buffers()] if model.training else []
    try:
        return _evaluate(model, loss_fn, data, metric_fn, device)
    finally:
        for b, v in saved:
            b.copy_(v)


def _evaluate(
    model: nn.Module,
    loss_fn: LossFn,
    data: Batch | Iterable[Batch],
    metric_fn: Callable[[Tensor, Tensor], Tensor] | None,
    device: torch.device,
) -> tuple[float, float | None]:
    total, total_metric, count = 0.0, 0.0, 0
    for inputs, targets in iter_batches(data):
        inputs, targets = inputs.to(device), targets.to(device)
        out = model(inputs)
        loss = check_scalar_loss(loss_fn(out, targets))
        n = int(inputs.shape[0])
        total += float(loss) * n
        if metric_fn is not None:
            total_metric += float(metric_fn(out, targets)) * n
        count += n
    if count == 0:
        raise ValueError("data is empty: no examples were found")
    return total / count, (total_metric / count if metric_fn is not None else None)


def accuracy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Classification accuracy of logits ``outputs`` against integer ``targets``."""
    return (outputs.argmax(dim=-1) == targets).float().mean()


@contextlib.contextmanager
def perturbed(params: Sequence[Tensor], delta: Sequence[Tensor]) -> Iterator[None]:
    """Temporarily add ``delta`` to ``params`` in place; restores the exact original values."""
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p, d in zip(params, delta, strict=True):
                p.add_(d.to(p.dtype))
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


def check_like(vectors: Sequence[Tensor], params: Sequence[Tensor], name: str) -> list[Tensor]:
    """Check that ``vectors`` is a list of tensors shaped like ``params``."""
    vectors = list(vectors)
    if len(vectors) != len(params):
        raise ValueError(f"{name} has {len(vectors)} tensors, the parameters have {len(params)}")
    for i, (v, p) in enumerate(zip(vectors, params)):
        if v.shape != p.shape:
            raise ValueError(
                f"{name}[{i}] has shape {tuple(v.shape)}, parameter has shape {tuple(p.shape)}"
            )
    return [v.to(device=p.device, dtype=p.dtype) for v, p in zip(vectors, params)]


def as_grid(values: Sequence[float] | np.ndarray | Tensor, name: str) -> np.ndarray:
    """``values`` as a finite, non-empty 1-D float64 array (a grid of step sizes)."""
    arr = np.asarray(values.cpu() if isinstance(values, Tensor) else values, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 1:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of numbers")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


def dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """Inner product of two lists of tensors."""
    return sum((x * y).sum() for x, y in zip(a, b))  # type: ignore[return-value]
