"""Elementwise functions whose fastest form differs between eager and compiled code.

Eagerly, one ``torch._foreach_*`` op per list is best (one kernel launch per group). Under
``torch.compile`` some of those ops have no fused lowering, or a slow one, and the same value has
a cheaper form that fuses into the step's one kernel:

- ``sigmoid``: inductor (torch 2.11-2.13) has no lowering for ``_foreach_sigmoid`` (an eager
  fallback: one more pass over memory), but lowers ``torch.sigmoid`` of one tensor into the
  kernel (vectorized ``exp``). The earlier form ``1 / (1 + pow(e, -x))`` fused too, but a
  vectorized ``pow`` costs five times an ``exp`` on a CPU: diffGrad's compiled step took 3.4x
  its bandwidth floor on 21M parameters.
- cube root (MADGRAD): ``pow(x, 1/3)`` is a vectorized ``powf`` in compiled CPU code, 27 ms for
  21M floats on two cores against 12 ms for ``exp(log(x) / 3)`` (and 6 ms for a plain add),
  which made MADGRAD's compiled step compute-bound at 3.2x its floor. Compiled for a CPU the
  cube root is therefore ``exp(log(x) / 3)``: within 3e-6 relative of the exact root in
  float32 over the whole float range (``pow(x, 1/3)`` itself is within 8e-7 there: its exponent
  1/3 is rounded to float32), exact at 0 and infinity. On GPUs the step is memory-bound and keeps ``pow``.

The eager forms are the reference; the compiled forms are tested against them
(``tests/core/test_elementwise_math.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["cube_root", "sigmoid_"]


def sigmoid_(xs: list[Tensor]) -> None:
    """``x <- 1 / (1 + exp(-x))`` for every tensor of ``xs``, in place."""
    if torch.compiler.is_compiling():
        for x in xs:
            x.sigmoid_()
    else:
        torch._foreach_sigmoid_(xs)


def cube_root(xs: list[Tensor]) -> list[Tensor]:
    """``x^(1/3)`` of every tensor of ``xs`` (``x >= 0``), in fresh tensors."""
    if torch.compiler.is_compiling() and xs and xs[0].device.type == "cpu":
        return [torch.exp(torch.log(x) * (1.0 / 3.0)) for x in xs]
    return list(torch._foreach_pow(xs, 1.0 / 3.0))
