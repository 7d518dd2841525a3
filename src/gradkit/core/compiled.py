"""Compiling an optimizer step: the chain over a group's tensor lists under ``torch.compile``.

Two fast paths use it. The flat path (:mod:`gradkit.core.flat`) passes one-element lists, the
flat buffers of a group whose transforms are all ``flat_ok``, so that the whole step becomes one
generated kernel. ``fused="compile"`` passes the group's per-tensor lists, for chains with
per-tensor reductions (AdamP's cosine test, NovoGrad's layer norms, per-tensor clipping) that
cannot use one flat buffer; on the eager path those cost a dozen small ops per tensor, and the
compiler fuses each tensor's reductions with its elementwise math.

Hyperparameters that change every step must not be baked into the compiled code as constants
(one recompile per step). Python ints (the step number) become dynamic after their first change;
python floats passed to ``torch._foreach_*`` ops are specialized by dynamo, so every float
hyperparameter travels into the compiled function as two ints (mantissa and exponent, exact) and
is rebuilt there as a symbolic float. The step number is one int for the whole group: the
compiled step is used only when every parameter of the group is on the same step (the normal
case). See docs/performance.md.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from gradkit.core.transform import Chain, StepContext

__all__ = ["encode_hyperparameters", "group_update", "make_compiled_group_update"]

_FLOAT_TAG = "__gradkit_float__"


class _CompiledContext(StepContext):
    """Step context for traced code: plain lists, and ``writable`` always copies.

    Copies cost nothing under the compiler (the copy fuses into the kernel), and plain lists
    avoid the list subclass that the tracer cannot follow.
    """

    def writable(self, updates: list[Tensor]) -> list[Tensor]:
        return [u.clone() for u in updates]

    def owned(self, updates: list[Tensor]) -> list[Tensor]:
        return list(updates)


def encode_hyperparameters(group: dict[str, Any]) -> dict[str, Any]:
    """The group's hyperparameters with every float written as exact ``(tag, mantissa, exp)``."""
    return {k: _encode(v) for k, v in group.items() if k != "params"}


def _encode(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value):
        mantissa, exponent = math.frexp(value)
        return (_FLOAT_TAG, int(mantissa * 2**53), exponent - 53)
    if isinstance(value, tuple):
        return tuple(_encode(v) for v in value)
    if isinstance(value, list):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 3 and value[0] == _FLOAT_TAG:
        return value[1] * 2.0 ** value[2]
    if isinstance(value, tuple):
        return tuple(_decode(v) for v in value)
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def group_update(
    transform: Chain,
    params: list[Tensor],
    grads: list[Tensor],
    state: dict[str, list[Tensor]],
    hyperparameters: dict[str, Any],
    step: int,
    optimizer: Any = None,
) -> None:
    """Run ``transform`` on the group's tensor lists and add the steps to ``params`` in place.

    ``hyperparameters`` are encoded by :func:`encode_hyperparameters`.
    """
    group = {k: _decode(v) for k, v in hyperparameters.items()}
    ctx = _CompiledContext(
        group=group, steps=[step] * len(params), grads=grads, optimizer=optimizer
    )
    transform.apply(params, grads, state, ctx)


def _compile_with_own_cache(
    fn: Callable[..., Any], backend: str = "inductor"
) -> Callable[..., Any]:
    """``torch.compile(fn)`` on a fresh copy of ``fn``'s code object, hence its own compile cache.

    Each optimizer compiles its own copy, so that many optimizers in one process do not share
    (and exhaust) one recompile limit.
    """
    fresh = types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )
    return torch.compile(fresh, backend=backend)


def make_compiled_group_update(backend: str = "inductor") -> Callable[..., None]:
    """A compiled :func:`group_update` with its own compile cache."""
    return _compile_with_own_cache(group_update, backend)
