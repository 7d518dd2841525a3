"""Shared helpers of the per-tensor transforms: unit-wise norms and integer hyperparameters."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradkit.core.hyperparams import Hyperparameter, integer

__all__ = ["unit_norm", "positive_int"]


def unit_norm(x: Tensor) -> Tensor:
    """The l2 norm of each output unit of ``x``.

    For ``x.ndim >= 2`` the norm runs over every dimension but the first (the fan-in of a linear
    row or a convolution filter) and keeps dimensions so that it broadcasts against ``x``; for
    vectors and scalars it is the norm of the whole tensor (0-dim). This is the "unit-wise" norm
    of Brock et al., arXiv 2102.06171.
    """
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)


def positive_int(
    name: str, default: Any, *, low: int = 1, allow_none: bool = False
) -> Hyperparameter:
    """An integer ``>= low`` (``None`` too with ``allow_none=True``)."""
    return integer(name, default, low=low, allow_none=allow_none)
