"""Hand several gradients to an optimizer: compute them, combine them, write ``.grad``.

The several-gradients path replaces ``sum(losses).backward()`` in a training loop::

    losses = [loss_fn_a(out_a, y_a), loss_fn_b(out_b, y_b)]      # one forward pass
    multigrad.backward(losses, PCGrad(), shared_params=trunk.parameters(),
                       task_params=heads.parameters())
    optimizer.step()                                              # any optimizer

Shared parameters get the aggregated gradient; task-specific parameters (a head that only one
loss reaches) get the plain gradient of the summed losses, as in torchjd's ``mtl_backward`` and
LibMTL: surgery only matters where tasks share parameters.

Memory: the shared parameters' Jacobian, ``k`` gradient copies (``k x n_shared`` numbers in the
parameters' dtype), is materialised; task-specific parameters cost one summed copy. Time: ``k``
backward passes through the graph (``retain_graph`` for the first ``k - 1``) plus the
aggregator's ``O(k^2 n_shared)`` Gramian. ``max_jacobian_bytes`` refuses, before allocating, a
Jacobian larger than a bound.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gradkit.errors import invalid_value
from gradkit.multigrad.aggregators import Aggregator

__all__ = [
    "MultiGradInfo",
    "aggregate_into_grad",
    "backward",
    "jacobian",
    "jacobian_bytes",
    "per_example_jacobian",
]


@dataclass(frozen=True)
class MultiGradInfo:
    """What :func:`backward` did: the number of gradients, the Jacobian's size in bytes, the
    losses' values and the aggregator's weights when it has them (Gramian-weighted methods)."""

    num_gradients: int
    jacobian_bytes: int
    losses: Tensor
    weights: Tensor | None


def _params(params: Iterable[Tensor] | Iterable[nn.Parameter]) -> list[Tensor]:
    out = list(params)
    seen: set[int] = set()
    for p in out:
        if not isinstance(p, Tensor) or not p.requires_grad:
            raise ValueError("parameters must be tensors with requires_grad=True")
        if id(p) in seen:
            raise ValueError("a parameter appears twice")
        seen.add(id(p))
    return out


def _check_losses(losses: Sequence[Tensor]) -> list[Tensor]:
    out = list(losses)
    if len(out) == 0:
        raise ValueError("losses must hold at least one loss")
    for i, loss in enumerate(out):
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"losses[{i}] must be a scalar tensor")
        if not loss.requires_grad:
            raise ValueError(f"losses[{i}] does not require grad (computed under no_grad?)")
    return [loss.reshape(()) for loss in out]


def jacobian_bytes(num_gradients: int, params: Sequence[Tensor]) -> int:
    """Bytes of a ``k``-row Jacobian of ``params``: ``k * sum(numel * itemsize)``."""
    return num_gradients * sum(p.numel() * p.element_size() for p in params)


def jacobian(
    losses: Sequence[Tensor],
    params: Iterable[Tensor],
    *,
    retain_graph: bool = False,
    max_jacobian_bytes: int | None = None,
) -> list[Tensor]:
    """The gradients of ``k`` scalar losses with respect to ``params``, stacked per parameter.

    Returns one tensor ``[k, *p.shape]`` per parameter (row ``i`` = gradient of ``losses[i]``;
    zeros where a loss does not reach a parameter). ``k`` backward passes.
    """
    return _jacobian_and_sum(
        _check_losses(losses), _params(params), [], retain_graph, max_jacobian_bytes
    )[0]


def _jacobian_and_sum(
    losses: list[Tensor],
    shared: list[Tensor],
    task: list[Tensor],
    retain_graph: bool,
    max_jacobian_bytes: int | None,
) -> tuple[list[Tensor], list[Tensor | None]]:
    k = len(losses)
    ids = {id(p) for p in shared}
    if any(id(p) in ids for p in task):
        raise ValueError("a parameter is both in shared_params and task_params")
    size = jacobian_bytes(k, shared)
    if max_jacobian_bytes is not None and size > max_jacobian_bytes:
        raise ValueError(
            f"the Jacobian of {k} gradients over the shared parameters needs {size} bytes, "
            f"more than max_jacobian_bytes={max_jacobian_bytes}"
        )
    jac = [torch.zeros((k, *p.shape), dtype=p.dtype, device=p.device) for p in shared]
    summed: list[Tensor | None] = [None] * len(task)
    inputs = shared + task
    for i, loss in enumerate(losses):
        grads = torch.autograd.grad(
            loss, inputs, retain_graph=retain_graph or i < k - 1, allow_unused=True
        )
        for j, g in enumerate(grads[: len(shared)]):
            if g is not None:
                jac[j][i].copy_(g)
        for j, g in enumerate(grads[len(shared) :]):
            if g is not None:
                summed[j] = g if summed[j] is None else summed[j] + g
    return jac, summed


def _write(param: Tensor, grad: Tensor) -> None:
    grad = grad.to(dtype=param.dtype)
    if param.grad is None:
        param.grad = grad.detach().clone() if grad._base is not None else grad.detach()
    else:
        param.grad.add_(grad)


def aggregate_into_grad(
    jacobian: Sequence[Tensor],
    params: Sequence[Tensor],
    aggregator: Aggregator | Callable[..., list[Tensor]],
    *,
    losses: Tensor | None = None,
) -> list[Tensor]:
    """Combine a Jacobian (one ``[k, *p.shape]`` tensor per parameter, from any source: per-task,
    per-example, per-class) with ``aggregator`` and add the result to ``p.grad`` (as ``backward``
    accumulates). Returns the combined gradients."""
    params = list(params)
    if len(jacobian) != len(params):
        raise ValueError(f"jacobian has {len(jacobian)} tensors for {len(params)} params")
    for jac, p in zip(jacobian, params):
        if tuple(jac.shape[1:]) != tuple(p.shape):
            raise ValueError(
                f"a jacobian tensor of shape {tuple(jac.shape)} does not match a parameter "
                f"of shape {tuple(p.shape)}"
            )
    combined = aggregator(jacobian, losses=losses, params=params)
    with torch.no_grad():
        for p, g in zip(params, combined):
            _write(p, g)
    return combined


def backward(
    losses: Sequence[Tensor],
    aggregator: Aggregator | Callable[..., list[Tensor]],
    shared_params: Iterable[Tensor],
    task_params: Iterable[Tensor] = (),
    *,
    retain_graph: bool = False,
    max_jacobian_bytes: int | None = None,
) -> MultiGradInfo:
    """Backward for ``k`` losses: aggregated gradient on shared params, summed on task params.

    ``k`` backward passes; each shared parameter's ``k`` gradients are stacked into a
    ``[k, *p.shape]`` tensor and ``aggregator`` combines them; the result is *added* to ``p.grad``
    (call ``optimizer.zero_grad()`` as usual). Task-specific parameters get the gradient of
    ``sum(losses)``. Parameters no loss reaches keep ``grad`` unchanged (``None``) if they are task
    parameters; shared parameters get the aggregate of zero rows.

    Memory: ``k * sum(p.numel() * p.element_size())`` bytes for the shared Jacobian (refused above
    ``max_jacobian_bytes``), one summed copy of the task parameters' gradients, and the graph kept
    alive until the last backward pass.

    >>> import torch
    >>> from torch import nn
    >>> from gradkit import multigrad
    >>> torch.manual_seed(0) and None
    >>> trunk, head_a, head_b = nn.Linear(4, 8), nn.Linear(8, 3), nn.Linear(8, 1)
    >>> params = [*trunk.parameters(), *head_a.parameters(), *head_b.parameters()]
    >>> opt = torch.optim.SGD(params, lr=0.1)
    >>> x, ya, yb = torch.randn(16, 4), torch.randint(0, 3, (16,)), torch.randn(16, 1)
    >>> for step in range(3):
    ...     opt.zero_grad()
    ...     h = torch.relu(trunk(x))
    ...     losses = [nn.functional.cross_entropy(head_a(h), ya),
    ...               nn.functional.mse_loss(head_b(h), yb)]
    ...     info = multigrad.backward(losses, multigrad.UPGrad(), trunk.parameters(),
    ...                               [*head_a.parameters(), *head_b.parameters()])
    ...     opt.step()
    >>> info.num_gradients, info.jacobian_bytes  # 2 copies of the trunk's 40 float32 numbers
    (2, 320)
    >>> info.weights.shape
    torch.Size([2])
    """
    if max_jacobian_bytes is not None and not max_jacobian_bytes >= 0:
        raise invalid_value("max_jacobian_bytes", max_jacobian_bytes, ">= 0 or None")
    loss_list = _check_losses(losses)
    shared = _params(shared_params)
    task = _params(task_params)
    if not shared:
        raise ValueError("shared_params is empty: there is nothing to aggregate")
    jac, summed = _jacobian_and_sum(loss_list, shared, task, retain_graph, max_jacobian_bytes)
    values = torch.stack([loss.detach() for loss in loss_list])
    aggregate_into_grad(jac, shared, aggregator, losses=values)
    with torch.no_grad():
        for p, g in zip(task, summed):
            if g is not None:
                _write(p, g)
    weights = getattr(aggregator, "last_weights", None)
    return MultiGradInfo(
        num_gradients=len(loss_list),
        jacobian_bytes=jacobian_bytes(len(loss_list), shared),
        losses=values,
        weights=None if weights is None else weights.clone(),
    )


def per_example_jacobian(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    params: Sequence[Tensor] | None = None,
) -> tuple[list[Tensor], list[Tensor]]:
    """Per-example gradients as a Jacobian for :func:`aggregate_into_grad`: ``(jacobian, params)``.

    Uses the curvature engine's ``per_example_gradients`` (``torch.func.vmap``): memory is
    ``batch`` gradient copies.
    """
    from gradkit.curvature.per_example import named_params, per_example_gradients

    sel = named_params(model, params)
    grads = per_example_gradients(model, loss_fn, inputs, targets, list(sel.values()))
    return [grads[n] for n in sel], list(sel.values())
