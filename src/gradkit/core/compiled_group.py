"""The compiled multi-tensor path: a param group's whole chain under ``torch.compile``.

The flat fast path (:mod:`gradkit.core.flat`) needs every transform to be ``flat_ok``. Chains
with per-tensor reductions (AdamP's cosine test, NovoGrad's layer norms, per-tensor clipping)
are not, and on the eager path they cost a dozen small ops per tensor: thousands of kernel
launches and Python dispatches per step for a model with a hundred tensors. ``fused="compile"``
runs the same per-tensor lists through ``torch.compile`` instead, so that the compiler fuses
each tensor's reductions and elementwise math, and the step is issued by generated code rather
than by Python op by op.

Hyperparameters travel as in the flat path (floats as exact mantissa/exponent ints, so that a
scheduled lr does not recompile). The step number is one int for the whole group (the path is
used only when every parameter of the group is on the same step, the normal case).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from gradkit.core.flat import _CompiledContext, _decode, compile_with_own_cache
from gradkit.core.transform import Chain

__all__ = ["group_update", "make_compiled_group_update"]


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

    ``hyperparameters`` are encoded as by :func:`gradkit.core.flat.encode_hyperparameters`.
    """
    group = {k: _decode(v) for k, v in hyperparameters.items()}
    ctx = _CompiledContext(
        group=group, steps=[step] * len(params), grads=grads, optimizer=optimizer
    )
    updates = torch._foreach_neg(grads) if group["maximize"] else list(grads)
    updates = transform.update(updates, state, params, ctx)
    torch._foreach_add_(params, updates)


def make_compiled_group_update(backend: str = "inductor") -> Callable[..., None]:
    """A compiled :func:`group_update` with its own compile cache."""
    return compile_with_own_cache(group_update, backend)
