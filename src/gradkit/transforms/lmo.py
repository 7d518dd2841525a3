"""Steepest-descent directions under a chosen norm (linear minimization oracles).

For a norm ``||.||`` the steepest-descent direction of a gradient ``g`` is the maximizer of
``<g, d>`` over the unit ball ``||d|| <= 1``; the optimizer steps along its negative (the
linear minimization oracle over the ball). Per tensor (layer):

- ``"spectral"`` (operator norm of the matrix view): ``d = U V^T`` for ``g = U S V^T``, computed
  by the Newton-Schulz iteration of :mod:`gradkit.transforms.orthogonalize`: Muon's direction.
  Vectors are ``(1, n)`` matrices, so their direction is ``g / ||g||_2``.
- ``"l2"`` (Frobenius norm): ``d = g / ||g||_F``: normalized SGD.
- ``"linf"`` (max-abs norm): ``d = sign(g)``: sign descent.

Its value ``<g, d>`` is the dual norm of ``g``: nuclear, Frobenius and l1 respectively
(:func:`dual_norm`). Bernstein & Newhouse, "Old Optimizer, New Norm: An Anthology", arXiv
2409.20325; Kovalev, "Understanding Gradient Orthogonalization for Deep Learning via
Non-Euclidean Trust-Region Optimization", arXiv 2503.12645.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gradkit.core.hyperparams import choice, integer
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList
from gradkit.transforms.orthogonalize import (
    QUINTIC,
    CompileCache,
    compile_backend,
    orthogonalize,
)

__all__ = ["NORMS", "steepest_direction", "dual_norm", "SteepestDirection"]

NORMS = ("spectral", "l2", "linf")


def steepest_direction(
    updates: Sequence[Tensor],
    norm: str,
    *,
    ns_steps: int = 5,
    coefficients: Sequence[float] = QUINTIC,
    eps: float = 1e-12,
    dtype: torch.dtype | None = None,
    fused: bool | None = None,
    cache: CompileCache | None = None,
    backend: str = "inductor",
) -> list[Tensor]:
    """The unit-norm steepest-ascent direction of every tensor under ``norm`` (see module doc).

    ``fused``, ``cache`` and ``backend``: compiling the spectral direction's iteration, as in
    :func:`gradkit.transforms.orthogonalize.orthogonalize`.
    """
    updates = list(updates)
    if norm == "spectral":
        return orthogonalize(
            updates, ns_steps, coefficients, dtype=dtype, fused=fused, cache=cache,
            backend=backend,
        )  # fmt: skip
    if norm == "l2":
        norms = torch._foreach_norm(updates)
        torch._foreach_clamp_min_(norms, eps)
        return torch._foreach_div(updates, norms)
    if norm == "linf":
        return torch._foreach_sign(updates)
    raise ValueError(f"Invalid norm: {norm!r}; norm must be one of {NORMS!r}")


def dual_norm(u: Tensor, norm: str) -> Tensor:
    """The dual norm of ``u``: nuclear (spectral), Frobenius (l2) or l1 (linf), as a 0-d tensor.

    The nuclear norm is computed exactly (singular values in float32) on the matrix view; it is
    NaN for a matrix with NaN or infinite entries.
    """
    if norm == "spectral":
        m = u.reshape(u.size(0), -1) if u.ndim >= 2 else u.reshape(1, -1)
        if not bool(torch.isfinite(m).all()):  # the SVD refuses NaN/inf: let them through
            return torch.full((), float("nan"), dtype=u.dtype, device=u.device)
        return torch.linalg.matrix_norm(m.float(), ord="nuc").to(u.dtype)
    if norm == "l2":
        return torch.linalg.vector_norm(u)
    if norm == "linf":
        return torch.linalg.vector_norm(u, ord=1)
    raise ValueError(f"Invalid norm: {norm!r}; norm must be one of {NORMS!r}")


class SteepestDirection(GradientTransformation):
    """Replace each update by its steepest direction under the group's ``norm``.

    Hyperparameter ``norm`` ("spectral", "l2" or "linf"); with "spectral" also ``ns_steps``
    (read when present, default 5). Tensors are treated one at a time (layer-wise norms).
    Complex parameters are refused (a matrix norm's direction has no meaning on the real view).
    ``fused``: compile the spectral direction's iteration (None: on CUDA only).
    """

    flat_ok = False
    complex_ok = False
    hyperparameters = (
        choice("norm", "spectral", NORMS),
        integer("ns_steps", 5, low=1, high=100),
    )

    def __init__(
        self,
        coefficients: Sequence[float] = QUINTIC,
        dtype: torch.dtype | None = None,
        *,
        fused: bool | None = None,
    ) -> None:
        self.coefficients = tuple(coefficients)
        self.dtype = dtype
        self.fused = fused
        self.cache = CompileCache()

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        out = steepest_direction(
            updates,
            ctx.group["norm"],
            ns_steps=ctx.group["ns_steps"],
            coefficients=self.coefficients,
            dtype=self.dtype,
            fused=self.fused,
            cache=self.cache,
            backend=compile_backend(ctx),
        )
        return ctx.owned(out)
