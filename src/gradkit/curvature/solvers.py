"""Matrix-free linear solves with a curvature operator: damped conjugate gradient and a
Lanczos (Krylov) solve with the absolute value of the matrix.

Both take the matrix as products only: a :class:`~gradkit.curvature.CurvatureOperator`
(Hessian, Gauss-Newton, Fisher; vectors are lists of tensors shaped like ``op.params``) or any
callable ``matvec(v) -> A v`` on flat 1-D tensors.

``conjugate_gradient(op, b, damping=lam)`` solves ``(A + lam I) x = b`` by CG (Hestenes &
Stiefel, 1952; Nocedal & Wright, "Numerical Optimization", Alg. 5.2). It stops when
``|r| <= tol * |b|``, after ``max_iter`` products, or at a direction ``p`` of non-positive
curvature ``p^T (A + lam I) p <= 0`` (the truncated-Newton rule: the iterate so far is returned,
or ``b / lam`` (``b`` if ``lam == 0``) when that happens on the first iteration).

``lanczos_abs_solve(op, b, num_steps=k, damping=lam)`` approximates ``(|A| + lam I)^-1 b``
with ``|A| = V |Lambda| V^T``: ``k`` Lanczos steps from ``q_1 = b / |b|`` (full
re-orthogonalisation) give ``A Q ~ Q T``; with ``T = S Theta S^T``,
``x = |b| Q^T S (|Theta| + lam)^-1 S^T e_1``. Exact when the Krylov space holds ``b``'s
eigen-components (``k`` = the number of distinct eigenvalues), as in saddle-free Newton
(Dauphin et al., "Identifying and attacking the saddle point problem in high-dimensional
non-convex optimization", 2014, arXiv 1406.2572).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from gradkit.curvature._utils import (
    FlatMatvec,
    check_nonnegative,
    check_positive,
    check_positive_int,
    flatten,
    unflatten,
)
from gradkit.curvature.lanczos import _Lanczos

__all__ = [
    "AbsSolveResult",
    "CGResult",
    "KrylovBasis",
    "conjugate_gradient",
    "krylov_basis",
    "lanczos_abs_solve",
]

Vector = Tensor | Sequence[Tensor]


@dataclass
class CGResult:
    """The result of :func:`conjugate_gradient`.

    ``x`` has the form of ``b`` (a flat tensor or a list of tensors); ``iterations`` is the
    number of products with ``A``; ``residual_norm`` is ``|b - (A + lam I) x|`` as tracked by
    the recurrence; ``negative_curvature`` is True when CG stopped at a direction of
    non-positive curvature.
    """

    x: Any
    iterations: int
    residual_norm: float
    converged: bool
    negative_curvature: bool = False


@dataclass
class AbsSolveResult:
    """The result of :func:`lanczos_abs_solve`: ``x`` (the form of ``b``), the Ritz values
    (eigenvalues of the Lanczos tridiagonal, ascending, float64) and the number of products."""

    x: Any
    ritz_values: Tensor
    iterations: int


def _flat_problem(op: Any, b: Vector) -> tuple[Callable[[Tensor], Tensor], Tensor, Any]:
    """``(matvec on flat tensors, flat b, function mapping a flat x back to b's form)``."""
    if isinstance(b, Tensor):
        flat_b = b.reshape(-1)
        shape = b.shape

        def back(x: Tensor) -> Any:
            return x.reshape(shape)

    else:
        like = list(b)
        flat_b = flatten(like)

        def back(x: Tensor) -> Any:
            return [t.clone() for t in unflatten(x, like)]

    if hasattr(op, "matvec") and hasattr(op, "params"):
        matvec: Callable[[Tensor], Tensor] = FlatMatvec(op)
    elif callable(op):
        matvec = op
    else:
        raise TypeError("op must be a CurvatureOperator or a callable matvec(v) on flat tensors")
    return matvec, flat_b, back


def conjugate_gradient(
    op: Any,
    b: Vector,
    *,
    damping: float = 0.0,
    tol: float = 1e-6,
    max_iter: int | None = None,
) -> CGResult:
    """Solve ``(A + damping I) x = b`` by conjugate gradient, matrix-free, from ``x = 0``.

    Args:
        op: a curvature operator (``op.params``, ``op.matvec``) or ``matvec(v)`` on flat tensors.
        b: right-hand side: a flat tensor, or a list of tensors shaped like ``op.params``.
        damping: ``lam >= 0`` added to the diagonal.
        tol: stop when ``|r| <= tol * |b|``.
        max_iter: at most this many products (default: the dimension).

    Returns:
        :class:`CGResult` with ``x`` in the form of ``b`` and the iterations used.
    """
    check_nonnegative("damping", damping)
    check_positive("tol", tol)
    check_positive_int("max_iter", max_iter, allow_none=True)
    matvec, bf, back = _flat_problem(op, b)
    n = bf.numel()
    max_iter = n if max_iter is None else max_iter
    x = torch.zeros_like(bf)
    r = bf.clone()
    bnorm = float(bf.norm())
    if bnorm == 0.0 or n == 0:
        return CGResult(back(x), 0, 0.0, True)
    p = r.clone()
    rr = float(r.dot(r))
    it = 0
    while it < max_iter:
        ap = matvec(p)
        if damping:
            ap = ap + damping * p
        it += 1
        pap = float(p.dot(ap))
        if not pap > 0.0:  # non-positive curvature (or NaN): truncate
            if it == 1:
                x = bf / damping if damping > 0 else bf.clone()
            return CGResult(back(x), it, rr**0.5, False, negative_curvature=True)
        alpha = rr / pap
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = float(r.dot(r))
        if rr_new**0.5 <= tol * bnorm:
            return CGResult(back(x), it, rr_new**0.5, True)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return CGResult(back(x), it, rr**0.5, rr**0.5 <= tol * bnorm)


def lanczos_abs_solve(
    op: Any,
    b: Vector,
    *,
    num_steps: int = 20,
    damping: float = 0.0,
) -> AbsSolveResult:
    """Approximate ``(|A| + damping I)^-1 b`` in the ``num_steps``-dimensional Krylov space
    of ``A`` and ``b`` (see the module docstring).

    Args:
        op: a curvature operator or ``matvec(v)`` on flat tensors (symmetric ``A``).
        b: a flat tensor, or a list of tensors shaped like ``op.params``.
        num_steps: Lanczos steps (products with ``A``), capped at the dimension; the iteration
            stops early when the Krylov space becomes invariant (then the solve is exact there).
        damping: ``lam >= 0`` added to the absolute Ritz values. With ``lam == 0`` a zero Ritz
            value gives an infinite solution: use ``lam > 0`` for singular ``A``.
    """
    check_positive_int("num_steps", num_steps)
    check_nonnegative("damping", damping)
    matvec, bf, back = _flat_problem(op, b)
    n = bf.numel()
    bnorm = float(bf.norm())
    if bnorm == 0.0 or n == 0:
        return AbsSolveResult(back(torch.zeros_like(bf)), torch.zeros(0, dtype=torch.float64), 0)
    kb = krylov_basis(matvec, bf, num_steps)
    x = kb.combine(kb.eigvecs @ (kb.eigvecs[0, :] / (kb.eigvals.abs() + damping)))
    return AbsSolveResult(back(x), kb.eigvals, kb.steps)


@dataclass
class KrylovBasis:
    """``m`` Lanczos steps from ``b``: ``A Q^T ~ Q^T T`` with orthonormal rows ``Q`` (``basis``)
    and ``T = S Theta S^T`` (``eigvals`` ascending, ``eigvecs``; float64).

    ``solve(shift)`` is ``(A + shift I)^-1 b`` restricted to the Krylov space,
    ``|b| Q^T S (Theta + shift)^-1 S^T e_1``: for symmetric positive definite ``A + shift I``
    the CG iterate after ``m`` steps. One basis serves many shifts (an adaptive search over the
    regularization needs no new products).
    """

    basis: Tensor
    eigvals: Tensor
    eigvecs: Tensor
    bnorm: float

    @property
    def steps(self) -> int:
        return int(self.basis.shape[0])

    def combine(self, coeff: Tensor) -> Tensor:
        """``|b| Q^T coeff`` for coefficients in the eigenbasis of ``T`` already applied."""
        return (coeff.to(self.basis.dtype) * self.bnorm) @ self.basis

    def solve(self, shift: float) -> Tensor:
        """``(A + shift I)^-1 b`` in the Krylov space (flat, the dtype of ``b``)."""
        s = self.eigvecs
        return self.combine(s @ (s[0, :] / (self.eigvals + shift)))


def krylov_basis(op: Any, b: Tensor, num_steps: int) -> KrylovBasis:
    """Run up to ``num_steps`` Lanczos steps (full re-orthogonalisation) on ``op`` from the flat,
    nonzero ``b``; stops early when the Krylov space is invariant. The recurrence is the
    curvature engine's own (:mod:`gradkit.curvature.lanczos`)."""
    check_positive_int("num_steps", num_steps)
    matvec, bf, _ = _flat_problem(op, b)
    n = bf.numel()
    bnorm = float(bf.norm())
    if not (bnorm > 0.0 and math.isfinite(bnorm)):
        raise ValueError("b must be a finite, nonzero vector")
    k = min(num_steps, n)
    # the generator only serves a restart, which this solve never takes: it stops there instead
    lanczos = _Lanczos(matvec, n, bf, capacity=k, gen=torch.Generator(), reorth="full")
    while lanczos.steps < k:
        lanczos.step()
        if lanczos.restarted or lanczos.exhausted:
            break  # the Krylov space is invariant: the solve is exact in it
    theta, s, _ = lanczos.ritz()
    return KrylovBasis(lanczos.state.basis[: lanczos.steps], theta, s, bnorm)
