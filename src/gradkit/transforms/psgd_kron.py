"""PSGD with Kronecker-factored preconditioners fitted on the Lie group of triangular matrices.

For a parameter seen as a matrix ``G`` (``(shape[0], prod(shape[1:]))``; vectors have one factor)
the preconditioner is ``P = (Q_1^T Q_1) kron (Q_2^T Q_2)`` with each ``Q_i`` upper triangular, or
diagonal when its side is 1 or longer than ``max_size_triangular`` (vectors: one diagonal
factor). It is fitted to the criterion ``E[h^T P h + v^T P^-1 v]`` of Li's PSGD, from a pair of a
gradient-like ``h`` (here the bias-corrected momentum) and a random probe ``v ~ N(0, I)``, by one
step on the group of triangular matrices (a relative step that keeps ``Q`` triangular and
invertible):

    A = Q_1 h Q_2^T,   B = Q_1^-T v Q_2^-1
    left:   E_1 = A A^T - B B^T        right:  E_2 = A^T A - B^T B
    Q_i <- Q_i - lr_p * triu(E_i) / ||A A^T + B B^T||_lb * Q_i       (triangular factor)
    q_i <- q_i - lr_p * diag(E_i) * q_i / max|diag(A A^T + B B^T)|    (diagonal factor)

``||.||_lb`` is a cheap lower bound of the spectral norm (one power-iteration step from the
row of largest norm). The step is ``P m_hat``, its RMS clipped to 1.1.

Probes are drawn from torch's global generator (``torch.randn``), one per parameter in group
order on each preconditioner update, so seeding torch reproduces a run and a resumed run that
restores torch's RNG state continues bit-exactly.

Li, "Preconditioned Stochastic Gradient Descent", arXiv 1512.04202; Li, "Preconditioner on
Matrix Lie Group for SGD", arXiv 1809.10232; Kronecker form as in Evan Walters' kron_torch and
its port in pytorch-optimizer (``Kron``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gradkit.core.hyperparams import integer, interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList
from gradkit.transforms.preconditioning import factor_dtype, kronecker_sides

__all__ = ["ScaleByPSGDKron", "norm_lower_bound"]

_TINY = torch.finfo(torch.float32).tiny


def norm_lower_bound(a: Tensor) -> Tensor:
    """A lower bound of the spectral norm of a symmetric ``a``: scaled by its largest entry,
    one power-iteration step from its column of largest norm."""
    scale = a.abs().max()
    if scale == 0:
        return scale
    b = a / scale
    j = torch.argmax((b * b).sum(0))
    x = b[:, j] @ b
    x = x / torch.linalg.vector_norm(x).clamp_min(_TINY)
    return scale * torch.linalg.vector_norm(x @ b.mT)


def _factor_shapes(shape, max_size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    rows, cols, _, _ = kronecker_sides(shape, 2**62, True)
    if len(shape) < 2:
        return (rows,), (0,)

    def one(n: int) -> tuple[int, ...]:
        return (n, n) if 1 < n <= max_size else (n,)

    return one(rows), one(cols)


def _apply(q: Tensor, x: Tensor, left: bool) -> Tensor:
    """``Q x`` (left) or ``x Q^T`` (right); a 1-D ``q`` is a diagonal."""
    if q.dim() == 1:
        return q[:, None] * x if left else x * q[None, :]
    return q @ x if left else x @ q.mT


def _solve(q: Tensor, x: Tensor, left: bool) -> Tensor:
    """``Q^-T x`` (left) or ``x Q^-1`` (right); ``Q`` upper triangular or diagonal."""
    if q.dim() == 1:
        return x / q[:, None] if left else x / q[None, :]
    if left:
        return torch.linalg.solve_triangular(q, x.mT, upper=True, left=False).mT
    return torch.linalg.solve_triangular(q, x, upper=True, left=False)


def _upper(x: Tensor) -> Tensor:
    """The upper triangle of ``x`` (``torch.triu``'s result). ``torch.triu`` always runs a
    parallel region, which costs milliseconds on a busy CPU for a tiny matrix."""
    i = torch.arange(x.shape[-1], device=x.device)
    return torch.where(i[:, None] <= i[None, :], x, 0.0)


def _fit(q: Tensor, a: Tensor, b: Tensor, left: bool, lr: float) -> None:
    """One step of ``Q`` (in place) on the criterion, from ``A`` and ``B`` (see the module)."""
    if q.dim() == 1:
        t1 = (a * a).sum(1 if left else 0)
        t2 = (b * b).sum(1 if left else 0)
        step = (t1 - t2) * lr
        step *= q
        step /= (t1 + t2).abs().max() + _TINY
        q.sub_(step)
        return
    t1 = a @ a.mT if left else a.mT @ a
    t2 = b @ b.mT if left else b.mT @ b
    step = _upper((t1 - t2) * lr)
    step /= norm_lower_bound(t1 + t2) + _TINY
    q.sub_(step @ q)


class ScaleByPSGDKron(GradientTransformation):
    """PSGD Kron's step (see the module docstring): momentum, preconditioner fit, ``P m_hat``.

    Per step ``t``: ``m <- b m + (1 - b) g`` (``b = momentum``), ``m_hat = m / (1 - b^t)``; on
    steps ``t = 1, 1 + f, ...`` (``f = precondition_frequency``) the factors take one step of size
    ``precondition_lr`` from the pair ``(m_hat, v)``, ``v`` a fresh probe; output ``u = P m_hat``
    scaled by ``min(1, 1.1 / (rms(u) + 1e-6))``. Every 100 steps (on an update step) the two
    factors of a matrix are rescaled to equal largest entries (``P`` unchanged, range kept).

    State: ``exp_avg`` and ``kron_q_left`` / ``kron_q_right`` (square upper-triangular, or
    vectors for diagonal factors; zero-size right factor for vectors), float32 (float64 for
    float64 parameters). Complex parameters are refused.

    Args:
        max_size_triangular: a side longer than this gets a diagonal factor.
        precondition_init_scale: ``Q_i`` start as ``scale^(1/k) I``, ``k`` the number of factors.
    """

    flat_ok = False
    complex_ok = False
    hyperparameters = (
        interval("momentum", 0.9, 0.0, 1.0, high_open=True),
        interval("precondition_lr", 0.1, 0.0, low_open=True),
        integer("precondition_frequency", 1, low=1),
    )

    def __init__(self, *, max_size_triangular: int = 8192, precondition_init_scale: float = 1.0):
        self.max_size = int(max_size_triangular)
        self.init_scale = float(precondition_init_scale)

    def init(self, params: TensorList) -> State:
        state: State = {"exp_avg": [], "kron_q_left": [], "kron_q_right": []}
        for p in params:
            dt = factor_dtype(p.dtype)
            state["exp_avg"].append(torch.zeros(p.shape, dtype=dt, device=p.device))
            shapes = _factor_shapes(p.shape, self.max_size)
            k = sum(1 for s in shapes if s != (0,))
            for key, s in zip(("kron_q_left", "kron_q_right"), shapes):
                scale = self.init_scale ** (1.0 / k)
                if len(s) == 2:
                    q = torch.eye(s[0], dtype=dt, device=p.device) * scale
                else:
                    q = torch.full(s, scale, dtype=dt, device=p.device)
                state[key].append(q)
        return state

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        beta = float(ctx.group["momentum"])
        lr_p = float(ctx.group["precondition_lr"])
        freq = int(ctx.group["precondition_frequency"])
        out: TensorList = []
        for i, u in enumerate(updates):
            m = state["exp_avg"][i]
            ql, qr = state["kron_q_left"][i], state["kron_q_right"][i]
            t = ctx.steps[i]
            m.mul_(beta).add_(u.to(m.dtype), alpha=1.0 - beta)
            h = m / (1.0 - beta**t)
            rows, cols, _, _ = kronecker_sides(u.shape, 2**62, True)
            h2 = h.reshape(rows, cols)
            two = qr.numel() > 0
            if (t - 1) % freq == 0:
                if two and t % 100 == 0:
                    _balance(ql, qr)
                v = torch.randn(u.shape, dtype=m.dtype, device=m.device).reshape(rows, cols)
                a = _apply(ql, h2, True)
                b = _solve(ql, v, True)
                if two:
                    a = _apply(qr, a, False)
                    b = _solve(qr, b, False)
                _fit(ql, a, b, True, lr_p)
                if two:
                    _fit(qr, a, b, False, lr_p)
            d = _apply(ql, h2, True)
            if two:
                d = _apply(qr, d, False)
            d = _apply(ql.mT if ql.dim() == 2 else ql, d, True)  # Q_1^T (Q_1 h Q_2^T)
            if two:
                d = _apply(qr.mT if qr.dim() == 2 else qr, d, False)  # ... Q_2
            d = d * torch.clamp(1.1 / (d.square().mean().sqrt() + 1e-6), max=1.0)
            out.append(d.reshape(u.shape).to(u.dtype))
        return ctx.owned(out)

    def __repr__(self) -> str:
        return (
            f"ScaleByPSGDKron(max_size_triangular={self.max_size}, "
            f"precondition_init_scale={self.init_scale})"
        )


def _balance(ql: Tensor, qr: Tensor) -> None:
    """Rescale two factors to the geometric mean of their largest entries (``P`` unchanged)."""
    nl, nr = ql.abs().max(), qr.abs().max()
    mean = (nl * nr).sqrt()
    ql.mul_(mean / nl)
    qr.mul_(mean / nr)
