"""Compiling an optimizer step: the chain over a group's tensor lists under ``torch.compile``.

Two fast paths use it. The flat path (:mod:`gradkit.core.flat`) passes one-element lists, the
flat buffers of a group whose transforms are all ``flat_ok``, so that the whole step becomes one
generated kernel. ``fused="compile"`` passes the group's per-tensor lists, for chains with
per-tensor reductions (AdamP's cosine test, NovoGrad's layer norms, per-tensor clipping) that
cannot use one flat buffer; on the eager path those cost a dozen small ops per tensor, and the
compiler fuses each tensor's reductions with its elementwise math.

One compiled function serves every optimizer in the process whose chain has the same structure
(the transforms' types and construction-time settings), for one dtype, device kind, backend and
path (:func:`shared_group_update`): a second optimizer, or the next trial of ``gradkit compare``,
reuses the compiled code instead of compiling its own. Each such function has its own copy of
the code object, hence its own recompile limit. The flat path compiles with ``dynamic=True``:
buffer lengths, the step number and the hyperparameters are symbolic from the first compile, so
groups of other sizes, later steps and a scheduled lr reuse one graph.

Hyperparameters that change every step must not be baked into the compiled code as constants
(one recompile per step). Python floats passed to ``torch._foreach_*`` ops are specialized by
dynamo, so every float hyperparameter travels into the compiled function as two ints (mantissa
and exponent, exact, each offset so that it is never 0 or 1, values dynamo would specialize
on) and is rebuilt there as a symbolic float. The step number is one int for the whole group:
the compiled step is used only when every parameter of the group is on the same step (the
normal case). See docs/performance.md.
"""

from __future__ import annotations

import contextlib
import math
import types
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import torch
from torch import Tensor

from gradkit.core.hyperparams import Hyperparameter
from gradkit.core.segments import Segments
from gradkit.core.transform import Chain, GradientTransformation, StepContext

__all__ = ["encode_hyperparameters", "group_update", "make_compiled_group_update"]

_FLOAT_TAG = "__gradkit_float__"
#: offset that keeps the encoded mantissa away from 0 and 1 (dynamo specializes ints equal to
#: 0 or 1 even with ``dynamic=True``, which would recompile when lr reaches 0.0)
_MANTISSA_OFFSET = 2**61
#: floats of binary exponent (``math.frexp``) in this range are encoded: ``M / 2**k`` with
#: ``k = 53 - exponent`` in [2, 124], so both divisors ``2**ceil(k/2)``, ``2**floor(k/2)`` lie
#: in [2, 2**62] (int64, never 0 or 1); magnitudes from about 4e-22 to 2e15. Others, and -0.0,
#: stay plain floats (specialized: a change recompiles)
_EXPONENTS = range(-71, 52)


class _CompiledContext(StepContext):
    """Step context for traced code: plain lists, and ``writable`` always copies.

    Copies cost nothing under the compiler (the copy fuses into the kernel), and plain lists
    avoid the list subclass that the tracer cannot follow.
    """

    def writable(self, updates: list[Tensor]) -> list[Tensor]:
        return [u.clone() for u in updates]

    def owned(self, updates: list[Tensor]) -> list[Tensor]:
        return list(updates)

    def is_owned(self, updates: list[Tensor]) -> bool:
        return False

    def loop_scalar(self, value: float) -> float:
        """``value``, computed once per step outside the generated per-element loop.

        Under the compiler a scalar made from the step and the encoded hyperparameters
        (``1 - beta2**t``, ``-lr / (1 - beta1**t)``) is a symbolic expression, which inductor
        writes into the kernel's per-element loop, where gcc does not hoist it: a ``pow`` per
        vector of elements, or the divisions that decode a learning rate (three dependent
        double divisions per 16 floats in AdamW's loop, seen in the object code). Passing it
        through a 0-d float64 tensor and ``.item()`` makes it a value that the generated code
        computes once, in a one-element kernel, and reads as a kernel argument.
        Only on CPU: inductor (torch 2.13) declares such kernel arguments as 32-bit floats, so
        float64 groups keep the inline form (their step stays exact to double rounding); on a
        GPU the step is bound by memory bandwidth, and the inline form spares compiling a CPU
        kernel for the scalar (measured on an H200 with torch 2.11: AdamW's first compiled step
        took 65 s cold and 47 s warm with the scalar hoisted, SGD's 7 s and 4 s).
        """
        if isinstance(value, list) or not torch.compiler.is_compiling() or not self.grads:
            return value
        if self.grads[0].device.type != "cpu" or self.grads[0].dtype == torch.float64:
            return value
        return torch.scalar_tensor(value, dtype=torch.float64).item()

    def per_step(self, fn: Callable[[int], float]) -> float | list[float]:
        """``fn(step)``, computed once per step outside the generated per-element loop
        (:meth:`loop_scalar`)."""
        return self.loop_scalar(super().per_step(fn))


def encode_hyperparameters(group: dict[str, Any]) -> dict[str, Any]:
    """The group's hyperparameters with every float written as exact integers (:func:`_encode`)."""
    return {k: _encode(v) for k, v in group.items() if k != "params"}


def _encode(value: Any) -> Any:
    """A float ``x`` as ``(tag, M + offset, 2**a, 2**b)`` with ``x == M / 2**a / 2**b`` exactly.

    Decoding is two divisions, not a ``pow``: inductor writes the decoding of a symbolic scalar
    into the per-element loop of the generated kernel, where a ``pow`` per vector of elements
    costs more than the arithmetic of the step itself.
    """
    negative_zero = isinstance(value, float) and math.copysign(1.0, value) < 0 and value == 0
    if isinstance(value, float) and math.isfinite(value) and not negative_zero:
        mantissa, exponent = math.frexp(value)
        if exponent not in _EXPONENTS:
            return value
        k = 53 - exponent
        m = int(mantissa * 2**53) + _MANTISSA_OFFSET
        return (_FLOAT_TAG, m, 2 ** ((k + 1) // 2), 2 ** (k // 2))
    if isinstance(value, tuple):
        return tuple(_encode(v) for v in value)
    if isinstance(value, list):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 4 and value[0] == _FLOAT_TAG:
        return (value[1] - _MANTISSA_OFFSET) / value[2] / value[3]
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
    segments: Segments | None = None,
    optimizer: Any = None,
) -> None:
    """Run ``transform`` on the group's tensor lists and add the steps to ``params`` in place.

    ``hyperparameters`` are encoded by :func:`encode_hyperparameters`; ``segments`` gives the
    tensor boundaries of flat buffers to chains that reduce per tensor. The optimizers' compiled
    steps pass no ``optimizer`` (``ctx.optimizer`` is None): the compiled code would be guarded
    on the optimizer's identity and could not be shared.
    """
    group = {k: _decode(v) for k, v in hyperparameters.items()}
    ctx = _CompiledContext(
        group=group, steps=[step] * len(params), grads=grads, optimizer=optimizer,
        segments=segments,
    )  # fmt: skip
    transform.apply(params, grads, state, ctx)


def _compile_with_own_cache(
    fn: Callable[..., Any], backend: str = "inductor", dynamic: bool | None = None
) -> Callable[..., Any]:
    """``torch.compile(fn)`` on a fresh copy of ``fn``'s code object, hence its own compile cache
    and its own recompile limit."""
    fresh = types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )
    return torch.compile(fresh, backend=backend, dynamic=dynamic)


def make_compiled_group_update(
    backend: str = "inductor", dynamic: bool | None = None
) -> Callable[..., None]:
    """A compiled :func:`group_update` with its own compile cache (not shared)."""
    return _compile_with_own_cache(group_update, backend, dynamic)


def _freeze(value: Any, depth: int = 0) -> Hashable:
    """A hashable summary of a transform's construction-time setting.

    Plain values stand for themselves, transforms for their structure; anything else is
    summarised by identity, so that objects that merely compare equal are never merged.
    Correctness never depends on this: dynamo guards what the compiled code read. The summary
    only decides which optimizers share a compiled function (and its recompile limit).
    """
    if value is None or isinstance(value, (bool, int, float, str, bytes, torch.dtype)):
        return value
    if depth > 6:
        return ("id", id(value))
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_freeze(v, depth + 1) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((str(k), _freeze(v, depth + 1)) for k, v in value.items()))
    if isinstance(value, GradientTransformation):
        return _structure(value, depth + 1)
    if isinstance(value, Hyperparameter):
        return ("spec", repr(value))
    return ("id", id(value))


def _structure(t: GradientTransformation, depth: int = 0) -> Hashable:
    settings = tuple((k, _freeze(v, depth + 1)) for k, v in sorted(vars(t).items()))
    return (type(t).__module__, type(t).__qualname__, settings)


def chain_structure(transform: Chain) -> Hashable:
    """The chain's structure: its transforms' types and construction-time settings, in order."""
    return tuple(_structure(t) for t in transform.transforms)


_HAVE_DYNAMIC_SOURCES = hasattr(torch.compiler.config, "dynamic_sources")  # torch 2.13 has it
#: inputs that are symbolic from the first compile: the step, learning rates (every
#: hyperparameter whose name holds "lr": the ones schedules change, and a scheduler's
#: ``initial_lr``) and the mantissa of every other float hyperparameter (its power-of-two
#: divisors stay constants until they change, so that decoding a constant hyperparameter costs
#: a multiplication in the generated loop, not two divisions)
_DYNAMIC_SCALARS = (
    r"L\['step'\],L\['hyperparameters'\]\['[^']*lr[^']*'\],L\['hyperparameters'\].*\[1\]$"
)
#: and on the flat path the buffers' lengths, and the number of tensors and rows of the segments
_DYNAMIC_BUFFERS = r"L\['params'\],L\['grads'\],L\['state'\],L\['segments'\]"


def _settings(flat: bool) -> dict[Any, dict[str, Any]]:
    """The config changes of :func:`compile_settings`, per config module."""
    out: dict[Any, dict[str, Any]] = {torch._dynamo.config: {"capture_scalar_outputs": True}}
    if _HAVE_DYNAMIC_SOURCES:
        sources = _DYNAMIC_SCALARS + ("," + _DYNAMIC_BUFFERS if flat else "")
        out[torch.compiler.config] = {"dynamic_sources": sources}
    return out


def _closure_patchers(flat: bool) -> list[Callable[[], Callable[[], None]]] | None:
    """torch's low-overhead config patchers (``change() -> revert``), made once; None where
    torch lacks them (then :func:`compile_settings` uses the public ``config.patch``, which
    defines a class per call: about 10 us a step each)."""
    settings = _settings(flat)
    if not all(hasattr(module, "_make_closure_patcher") for module in settings):
        return None
    return [module._make_closure_patcher(**changes) for module, changes in settings.items()]


_PATCHERS = {flat: _closure_patchers(flat) for flat in (True, False)}


@contextlib.contextmanager
def compile_settings(flat: bool = True) -> Iterator[None]:
    """Dynamo settings for calling a compiled step: per-step scalars read through ``.item()``
    are captured (not a graph break; :class:`_CompiledContext`), and the step, the lr, the
    mantissas of the other hyperparameters and (``flat``) the buffer lengths are symbolic from
    the first compile (no recompile when they change). The settings are thread-local."""
    patchers = _PATCHERS[flat]
    if patchers is None:
        with contextlib.ExitStack() as stack:
            for module, changes in _settings(flat).items():
                stack.enter_context(module.patch(**changes))
            yield
        return
    reverts = [change() for change in patchers]
    try:
        yield
    finally:
        for revert in reversed(reverts):
            revert()


#: (structure, dtype, device kind, backend, path) -> the compiled step shared by all optimizers
_SHARED: dict[Hashable, Callable[..., None]] = {}


def shared_group_update(
    transform: Chain,
    dtype: torch.dtype,
    device_type: str,
    backend: str = "inductor",
    *,
    flat: bool,
    length: int = 1,
) -> Callable[..., None]:
    """The compiled :func:`group_update` for ``transform``'s structure, made on first use and
    shared by every optimizer of the process with the same structure, dtype, device kind and
    backend.

    ``flat=True`` (one flat buffer per list) compiles with ``dynamic=True``: the buffer length,
    the step and the encoded hyperparameters are symbolic from the first compile, so every
    group size and step reuses one graph. ``flat=False`` (``fused="compile"``, per-tensor lists)
    also keys on the number of tensors ``length`` (list lengths are static in a graph) and
    leaves tensor sizes to automatic dynamic shapes (a model of other shapes recompiles once);
    the step and hyperparameters are dynamic from the start (:func:`compile_settings`, which
    callers enter around each call).
    """
    key = (chain_structure(transform), dtype, device_type, backend, flat, 1 if flat else length)
    fn = _SHARED.get(key)
    if fn is None:
        dynamic = True if flat and not _HAVE_DYNAMIC_SOURCES else None
        fn = _compile_with_own_cache(group_update, backend, dynamic)
        _SHARED[key] = fn
    return fn
