"""The gradient-source interface: something that fills the parameters' ``.grad``.

Every gradkit (and torch) optimizer consumes ``.grad``. A :class:`GradientSource` decides how
that signal is produced: backpropagation (:class:`Backprop`, the default), forward-mode
directional derivatives, zeroth-order probes, random feedback. Given a model, a loss function
and a batch ``(inputs, targets)`` it evaluates ``loss = loss_fn(model(inputs), targets)``,
writes an estimate of ``d loss / d p`` into ``p.grad`` for every parameter ``p`` with
``requires_grad``, and counts what it cost (:class:`Cost`). The optimizer then steps unchanged;
for optimizers that need a closure (SAM and its kin) :meth:`GradientSource.closure` builds one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Backprop", "Cost", "GradientSource", "LossFn", "split_batch"]

#: ``loss_fn(model_output, targets) -> scalar tensor``.
LossFn = Callable[[Any, Any], Tensor]


@dataclass
class Cost:
    """What computing gradients cost, in passes over the model.

    ``forward`` counts evaluations of the model's forward function, including the primal
    evaluation inside every JVP; ``backward`` counts reverse-mode passes (for direct feedback
    alignment, one pass made of layer-local backwards); ``jvp`` counts forward-mode
    (Jacobian-vector product) passes. ``peak_memory_bytes`` is the largest extra device memory
    seen during a call (CUDA only, measured with ``torch.cuda.max_memory_allocated`` above the
    memory in use when the call started; ``None`` on CPU, where it is not measured).
    """

    forward: int = 0
    backward: int = 0
    jvp: int = 0
    calls: int = 0
    peak_memory_bytes: int | None = None

    def __add__(self, other: Cost) -> Cost:
        peaks = [m for m in (self.peak_memory_bytes, other.peak_memory_bytes) if m is not None]
        return Cost(
            forward=self.forward + other.forward,
            backward=self.backward + other.backward,
            jvp=self.jvp + other.jvp,
            calls=self.calls + other.calls,
            peak_memory_bytes=max(peaks) if peaks else None,
        )


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` from a batch given as a two-element sequence."""
    if not isinstance(batch, Sequence) or isinstance(batch, (str, bytes)) or len(batch) != 2:
        raise ValueError(
            "Invalid batch: a gradient source takes a batch (inputs, targets), a sequence of "
            f"two elements; got {type(batch).__name__}"
        )
    return batch[0], batch[1]


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The named parameters a source fills: those with ``requires_grad``."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def write_grads(params: Sequence[Tensor], grads: Sequence[Tensor], accumulate: bool) -> None:
    """Set (or add to) ``p.grad`` for each parameter."""
    with torch.no_grad():
        for p, g in zip(params, grads):
            g = g.to(dtype=p.dtype).reshape(p.shape)
            if accumulate and p.grad is not None:
                p.grad.add_(g)
            else:
                p.grad = g.clone() if g.data_ptr() == p.data_ptr() else g.contiguous()


class _MemoryMeter:
    """Peak extra CUDA memory over a ``with`` block; ``None`` when not on CUDA."""

    def __init__(self, model: nn.Module) -> None:
        p = next(model.parameters(), None)
        self.device = p.device if p is not None and p.device.type == "cuda" else None
        self.peak: int | None = None

    def __enter__(self) -> _MemoryMeter:
        if self.device is not None:
            self.start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device is not None:
            self.peak = max(0, torch.cuda.max_memory_allocated(self.device) - self.start)


@dataclass
class _Tally:
    forward: int = 0
    backward: int = 0
    jvp: int = 0


class GradientSource(ABC):
    """Base class: fills ``.grad`` of a model's parameters and reports the cost.

    Subclasses implement :meth:`_compute`, returning the loss and a :class:`_Tally` of passes.
    Users call :meth:`compute` (or :meth:`closure` for optimizers that take one); afterwards
    ``last_cost`` is the cost of that call and ``cost`` the running total.
    """

    #: A short name (``"backprop"``, ``"forward"``, ...), as a comparison would label it.
    name: str = "source"

    def __init__(self) -> None:
        self.cost = Cost()
        self.last_cost = Cost()

    def compute(
        self, model: nn.Module, loss_fn: LossFn, batch: Any, *, accumulate: bool = False
    ) -> Tensor:
        """Fill ``p.grad`` for the model's trainable parameters; return the (detached) loss.

        ``accumulate=False`` (default) replaces ``p.grad``; ``True`` adds to it, as repeated
        ``loss.backward()`` calls would. The returned loss is ``loss_fn(model(inputs),
        targets)`` at the current parameters unless the source documents otherwise.
        """
        if not callable(loss_fn):
            raise ValueError("Invalid loss_fn: it must be callable (output, targets) -> loss")
        with _MemoryMeter(model) as meter:
            loss, tally = self._compute(model, loss_fn, batch, accumulate)
        self.last_cost = Cost(tally.forward, tally.backward, tally.jvp, 1, meter.peak)
        self.cost = self.cost + self.last_cost
        return loss.detach()

    def closure(
        self, model: nn.Module, loss_fn: LossFn, batch: Any, *, accumulate: bool = False
    ) -> Callable[[], Tensor]:
        """A closure for ``optimizer.step(closure)``: each call recomputes the gradient at the
        current parameters with this source and returns the loss (SAM calls it twice)."""

        def closure() -> Tensor:
            return self.compute(model, loss_fn, batch, accumulate=accumulate)

        return closure

    @abstractmethod
    def _compute(
        self, model: nn.Module, loss_fn: LossFn, batch: Any, accumulate: bool
    ) -> tuple[Tensor, _Tally]: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Backprop(GradientSource):
    """Reverse-mode automatic differentiation: ``loss.backward()``. The default source.

    Cost per call: 1 forward, 1 backward.

    >>> import torch
    >>> from torch import nn
    >>> from gradkit.sources import Backprop
    >>> torch.manual_seed(0) and None
    >>> model = nn.Linear(3, 2)
    >>> x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    >>> source = Backprop()
    >>> loss = source.compute(model, nn.functional.cross_entropy, (x, y))
    >>> model.weight.grad.shape, source.last_cost.forward, source.last_cost.backward
    (torch.Size([2, 3]), 1, 1)
    """

    name = "backprop"

    def _compute(
        self, model: nn.Module, loss_fn: LossFn, batch: Any, accumulate: bool
    ) -> tuple[Tensor, _Tally]:
        inputs, targets = split_batch(batch)
        params = [p for _, p in trainable(model)]
        if not accumulate:
            for p in params:
                p.grad = None
        with torch.enable_grad():
            loss = loss_fn(model(inputs), targets)
            loss.backward()
        return loss, _Tally(forward=1, backward=1)


def sample_like(
    params: Sequence[Tensor], generator: torch.Generator | None, leading: tuple[int, ...] = ()
) -> list[Tensor]:
    """Standard normal tensors shaped ``leading + p.shape`` for each parameter."""
    return [
        torch.randn(leading + tuple(p.shape), generator=generator, dtype=p.dtype, device=p.device)
        for p in params
    ]


def check_positive_int(name: str, value: Any) -> int:
    from gradkit.errors import invalid_value

    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise invalid_value(name, value, "an integer >= 1")
    return value


def check_positive_float(name: str, value: Any) -> float:
    from gradkit.errors import invalid_value

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise invalid_value(name, value, "a number > 0")
    if value == float("inf"):
        raise invalid_value(name, value, "a finite number > 0")
    return float(value)
