"""Small helpers shared by the curvature modules: data batching, flat/list conversions and
argument checks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

Batch = tuple[Tensor, Tensor]


def is_single_batch(data: object) -> bool:
    """True when ``data`` is one ``(inputs, targets)`` pair of tensors rather than an iterable."""
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and isinstance(data[0], Tensor)
        and isinstance(data[1], Tensor)
    )


def iter_batches(data: object, max_samples: int | None) -> Iterator[Batch]:
    """Yield ``(inputs, targets)`` batches from ``data``, truncated to ``max_samples`` examples.

    ``data`` is one ``(inputs, targets)`` pair or an iterable of them (e.g. a DataLoader). The
    last batch is sliced so that at most ``max_samples`` examples are seen in total.
    """
    batches: Iterable[object] = [data] if is_single_batch(data) else data  # type: ignore[assignment]
    seen = 0
    for batch in batches:
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise TypeError(
                "each batch must be an (inputs, targets) pair of tensors, got "
                f"{type(batch).__name__}"
            )
        inputs, targets = batch[0], batch[1]
        if not isinstance(inputs, Tensor) or not isinstance(targets, Tensor):
            raise TypeError("each batch must be an (inputs, targets) pair of tensors")
        n = inputs.shape[0] if inputs.dim() > 0 else 1
        if n == 0:
            continue
        if max_samples is not None and seen + n > max_samples:
            n = max_samples - seen
            inputs, targets = inputs[:n], targets[:n]
        yield inputs, targets
        seen += n
        if max_samples is not None and seen >= max_samples:
            return


def resolve_params(model: nn.Module, params: Sequence[Tensor] | None) -> list[Tensor]:
    """The parameters to differentiate: ``params`` if given, else all with ``requires_grad``."""
    if params is None:
        out = [p for p in model.parameters() if p.requires_grad]
    else:
        out = list(params)
        for p in out:
            if not isinstance(p, Tensor) or not p.requires_grad:
                raise ValueError("params must be tensors with requires_grad=True")
    if not out:
        raise ValueError("the model has no parameters with requires_grad=True to differentiate")
    return out


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate a list of tensors into one 1-D tensor."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vec: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Split a 1-D tensor into views shaped like ``like``."""
    out, i = [], 0
    for t in like:
        n = t.numel()
        out.append(vec[i : i + n].view_as(t))
        i += n
    return out


class MatvecOperator(Protocol):
    """What the estimators need of an operator: ``params`` and list-of-tensor products."""

    params: list[Tensor]

    def matvec(self, v: Sequence[Tensor]) -> list[Tensor]: ...


class FlatMatvec:
    """``x -> flatten(op.matvec(unflatten(x, op.params)))``: products on flat vectors.

    ``count`` is the number of products taken through this wrapper.
    """

    def __init__(self, op: MatvecOperator) -> None:
        self.op = op
        self.params = op.params
        self.count = 0

    def __call__(self, x: Tensor) -> Tensor:
        self.count += 1
        return flatten(self.op.matvec(unflatten(x, self.params)))


def check_scalar_loss(loss: object) -> Tensor:
    """Raise a clear error when ``loss_fn`` did not return a scalar tensor."""
    if not isinstance(loss, Tensor):
        raise TypeError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}")
    if loss.dim() != 0:
        raise ValueError(
            f"loss_fn must return a scalar (mean) loss, got a tensor of shape {tuple(loss.shape)}; "
            "use reduction='mean'"
        )
    return loss


def check_positive_int(name: str, value: object) -> None:
    """Raise unless ``value`` is an integer >= 1."""
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")


def check_int_at_least(name: str, value: object, minimum: int) -> None:
    """Raise unless ``value`` is an integer >= ``minimum``."""
    if not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")


def check_positive_or_none(name: str, value: float | None) -> None:
    """Raise unless ``value`` is None or > 0."""
    if value is not None and not value > 0:
        raise ValueError(f"{name} must be > 0 or None, got {value}")
