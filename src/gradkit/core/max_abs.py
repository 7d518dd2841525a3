"""The largest magnitude of each tensor of a list, fast on every device.

``torch._foreach_norm(xs, inf)`` is one fused kernel on a GPU, but on a CPU (torch 2.13) the
infinity norm runs far below memory bandwidth: 5.2 ms for 2M float32 elements on one thread,
against 0.21 ms for the Euclidean norm and 0.21 ms for ``torch.aminmax``
(``benchmarks/max_abs_cost.py``). On a CPU, outside compiled code, each tensor's largest magnitude
is therefore ``max(max(x), -min(x))`` from one ``aminmax`` pass. Both forms give the same value,
NaN included (a NaN anywhere gives NaN).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["max_abs"]


def max_abs(tensors: list[Tensor]) -> list[Tensor]:
    """``max |x|`` of each tensor (0-d tensors of its real dtype; 0 for an empty tensor)."""
    if not tensors:
        return []
    if tensors[0].device.type != "cpu" or torch.compiler.is_compiling():
        return list(torch._foreach_norm(tensors, float("inf")))
    out = []
    for x in tensors:
        if x.numel() == 0:
            out.append(torch.zeros((), dtype=x.dtype, device=x.device))
            continue
        if x.is_complex():  # |z| is not a max over the real view
            out.append(torch.linalg.vector_norm(x, float("inf")))
            continue
        low, high = torch.aminmax(x)
        out.append(torch.maximum(high, low.neg()))
    return out
