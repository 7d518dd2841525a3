"""Gradient in the top Hessian subspace, and how that subspace moves during training.

Gur-Ari, Roberts & Dyer, "Gradient Descent Happens in a Tiny Subspace" (arXiv 1812.04754)
observe that after a short transient the gradient lies mostly in the span of the top-``k``
Hessian eigenvectors (``k`` ~ number of classes) and that this span changes slowly. The two quantities, with ``V_t`` the ``k x P``
matrix of orthonormal top eigenvectors at step ``t`` and ``g_t`` the gradient:

    fraction(t)      = |V_t g_t|^2 / |g_t|^2                 (in [0, 1])
    overlap(t1, t2)  = |V_t1 V_t2^T|_F^2 / k                 (in [0, 1]; 1 = same subspace)

``overlap`` is the mean squared cosine of the principal angles between the two subspaces
(``(1/k) sum_i |P_t2 v_i^(t1)|^2`` in the paper's notation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gradkit.curvature import HessianOperator, top_eigenpairs
from gradkit.curvature._utils import check_positive, check_positive_int, flatten
from gradkit.diagnostics._plotting import new_figure, save_figure

LossFn = Callable[[Tensor, Tensor], Tensor]
Vectors = Tensor | Sequence[Sequence[Tensor]]


def _as_matrix(vectors: Vectors) -> Tensor:
    """``[k, P]`` float64 matrix from a matrix or a list of parameter-shaped vectors."""
    if isinstance(vectors, Tensor):
        mat = vectors if vectors.dim() == 2 else vectors.reshape(1, -1)
    else:
        vectors = list(vectors)
        if not vectors:
            raise ValueError("need at least one vector to span a subspace")
        mat = torch.stack([flatten([t.detach() for t in v]) for v in vectors])
    return mat.detach().to(torch.float64)


def _orthonormal_rows(mat: Tensor) -> Tensor:
    q, _ = torch.linalg.qr(mat.T)
    return q.T


def gradient_fraction(gradient: Tensor | Sequence[Tensor], eigvecs: Vectors) -> float:
    """``|V g|^2 / |g|^2``: the fraction of the squared gradient norm in ``span(eigvecs)``."""
    g = gradient if isinstance(gradient, Tensor) else flatten([t.detach() for t in gradient])
    g = g.reshape(-1).to(torch.float64)
    v = _orthonormal_rows(_as_matrix(eigvecs))
    if v.shape[1] != g.numel():
        raise ValueError(
            f"eigvecs have {v.shape[1]} entries per vector but the gradient has {g.numel()}"
        )
    gg = float(g @ g)
    if gg == 0.0:
        raise ValueError("the gradient is zero: the fraction is undefined")
    return float((v @ g).pow(2).sum()) / gg


def subspace_overlap(a: Vectors, b: Vectors) -> float:
    """``|Q_a Q_b^T|_F^2 / k_a``: the mean squared cosine of the principal angles.

    With ``k_a == k_b`` it is symmetric; otherwise it is the fraction of ``span(a)`` inside
    ``span(b)``. Inputs are orthonormalised first.
    """
    qa, qb = _orthonormal_rows(_as_matrix(a)), _orthonormal_rows(_as_matrix(b))
    if qa.shape[1] != qb.shape[1]:
        raise ValueError(f"the subspaces live in different spaces: {qa.shape[1]} vs {qb.shape[1]}")
    return float((qa @ qb.T).pow(2).sum()) / qa.shape[0]


@dataclass
class SubspaceSnapshot:
    """Top-``k`` eigenpairs and the gradient fraction at one point of training."""

    step: int
    fraction: float
    eigenvalues: list[float]
    basis: Tensor = field(repr=False)  # [k, P] float64, orthonormal rows
    overlap_with_reference: float | None = None
    overlap_with_previous: float | None = None
    num_matvecs: int = 0


def gradient_subspace(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    k: int = 10,
    params: Sequence[Tensor] | None = None,
    max_samples: int | None = None,
    tol: float = 1e-3,
    max_iter: int = 200,
    seed: int = 0,
    step: int = 0,
) -> SubspaceSnapshot:
    """Top-``k`` Hessian eigenvectors and the fraction of the gradient inside their span.

    The gradient and the Hessian are both averaged over ``data`` (up to ``max_samples``).
    """
    op = HessianOperator(model, loss_fn, data, params=params, max_samples=max_samples)
    vals, vecs = top_eigenpairs(op, k=k, tol=tol, max_iter=max_iter, seed=seed)
    basis = _orthonormal_rows(_as_matrix(vecs))
    frac = gradient_fraction(op.gradient(), basis)
    return SubspaceSnapshot(
        step=int(step),
        fraction=frac,
        eigenvalues=[float(v) for v in vals],
        basis=basis,
        num_matvecs=op.num_matvecs,
    )


class SubspaceTracker:
    """Training-loop callback: gradient fraction and subspace overlap every ``every`` steps.

    The first snapshot (or the one at ``reference_step``) is the reference that later
    subspaces are compared with, as in Gur-Ari et al.'s overlap(t1, t2) curves. Bases are kept
    only for the reference and the previous snapshot unless ``keep_bases=True``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Any,
        k: int = 10,
        every: int = 50,
        reference_step: int | None = None,
        params: Sequence[Tensor] | None = None,
        max_samples: int | None = None,
        tol: float = 1e-3,
        max_iter: int = 200,
        keep_bases: bool = False,
        seed: int = 0,
    ) -> None:
        check_positive_int("every", every)
        check_positive_int("k", k)
        check_positive_int("max_samples", max_samples, allow_none=True)
        check_positive("tol", tol)
        check_positive_int("max_iter", max_iter)
        self.model, self.loss_fn, self.data, self.k, self.every = model, loss_fn, data, k, every
        self.reference_step = reference_step
        self.params, self.max_samples, self.tol, self.max_iter = params, max_samples, tol, max_iter
        self.keep_bases, self.seed = keep_bases, seed
        self.history: list[SubspaceSnapshot] = []
        self._reference: Tensor | None = None
        self._previous: Tensor | None = None

    def measure(self, step: int) -> SubspaceSnapshot:
        """Measure now and append to ``history``."""
        snap = gradient_subspace(
            self.model, self.loss_fn, self.data, k=self.k, params=self.params,
            max_samples=self.max_samples, tol=self.tol, max_iter=self.max_iter, seed=self.seed,
            step=step,
        )  # fmt: skip
        if self._reference is None and (self.reference_step is None or step >= self.reference_step):
            self._reference = snap.basis
        if self._reference is not None:
            snap.overlap_with_reference = subspace_overlap(self._reference, snap.basis)
        if self._previous is not None:
            snap.overlap_with_previous = subspace_overlap(self._previous, snap.basis)
        self._previous = snap.basis
        if not self.keep_bases and self.history:
            self.history[-1].basis = torch.empty(0)
        self.history.append(snap)
        return snap

    def update(self, step: int) -> SubspaceSnapshot | None:
        """Measure if ``step % every == 0``."""
        if step % self.every != 0:
            return None
        return self.measure(step)

    __call__ = update


def plot_subspace(
    history: Sequence[SubspaceSnapshot], path: str | Path, title: str | None = None
) -> Path:
    """Plot the gradient fraction and the overlap with the reference subspace against step."""
    if not history:
        raise ValueError("history is empty: call tracker.update(step) during training first")
    fig, ax = new_figure()
    steps = [s.step for s in history]
    ax.plot(steps, [s.fraction for s in history], marker="o", ms=3, label="gradient in top-k")
    ov = [s.overlap_with_reference for s in history]
    if any(o is not None for o in ov):
        ax.plot(steps, [float("nan") if o is None else o for o in ov], marker="s", ms=3,
                label="overlap with reference subspace")  # fmt: skip
    ax.set_ylim(-0.02, 1.02)
    title = title or f"Top-{len(history[0].eigenvalues)} Hessian subspace"
    return save_figure(fig, ax, path, "step", "fraction", title)
