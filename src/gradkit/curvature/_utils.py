"""Small helpers shared by the curvature modules: data batching, flat/list conversions and
argument checks.

The argument checks raise the ValueError of :func:`gradkit.errors.invalid_value`, whose message
names the argument, its value and the allowed range: ``Invalid k: 0; k must be a positive
integer``. The diagnostics use them too.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from gradkit.errors import invalid_value

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


def is_int(value: object) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """A real number (Python or numpy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive_int(name: str, value: object, allow_none: bool = False) -> None:
    """Raise :func:`~gradkit.errors.invalid_value` unless ``value`` is an integer >= 1."""
    if allow_none and value is None:
        return
    if not is_int(value) or value < 1:  # type: ignore[operator]
        raise invalid_value(name, value, "a positive integer" + (" or None" if allow_none else ""))


def check_int_at_least(name: str, value: object, minimum: int) -> None:
    """Raise :func:`~gradkit.errors.invalid_value` unless ``value`` is an integer >= ``minimum``."""
    if not is_int(value) or value < minimum:  # type: ignore[operator]
        raise invalid_value(name, value, f"an integer >= {minimum}")


def check_positive(name: str, value: object, allow_none: bool = False) -> None:
    """Raise :func:`~gradkit.errors.invalid_value` unless ``value`` is a finite number > 0."""
    if allow_none and value is None:
        return
    if not is_real(value) or not (math.isfinite(value) and value > 0):  # type: ignore[arg-type]
        raise invalid_value(name, value, "a finite number > 0" + (" or None" if allow_none else ""))


def check_nonnegative(name: str, value: object) -> None:
    """Raise :func:`~gradkit.errors.invalid_value` unless ``value`` is a finite number >= 0."""
    if not is_real(value) or not (math.isfinite(value) and value >= 0):  # type: ignore[arg-type]
        raise invalid_value(name, value, "a finite number >= 0")
