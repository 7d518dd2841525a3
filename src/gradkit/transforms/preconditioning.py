"""Kronecker-factored preconditioning: the parts that Shampoo and SOAP share.

Every parameter with two or more dimensions is seen as a matrix ``G`` of shape
``(shape[0], prod(shape[1:]))`` (a Conv2d kernel ``(out, in, kh, kw)`` as ``(out, in*kh*kw)``).
Its **Kronecker factors** are running statistics of the gradient,

    L <- beta L + (1 - beta) G G^T        R <- beta R + (1 - beta) G^T G      (beta < 1: EMA)
    L <- L + G G^T                        R <- R + G^T G                      (beta = 1: sum)

(``beta = 1`` is the sum of Gupta, Koren & Singer's Shampoo; ``beta < 1`` the exponential
average of later Shampoo variants and of SOAP). A side longer than ``max_preconditioner_dim`` is
not preconditioned (identity, no factor kept). Vectors are preconditioned as an ``(n, 1)``
matrix with one factor only with ``precondition_1d=True``; otherwise they, scalars and matrices
with no side short enough take each method's declared **fallback**: a diagonal rule (Shampoo: the
diagonal of the same statistic, ``g / sqrt(v + eps)``; SOAP: Adam, which is SOAP with identity
eigenbases).

From the factors:

- :func:`damped_inverse_root`: ``(F + eps I)^(-1/p)`` by an eigendecomposition (eigenvalues
  clamped at 0 before the damping ``eps`` is added: ``eps`` is absolute, not relative to the
  largest eigenvalue).
- :func:`eigenbasis`: the eigenvectors of ``F``, by decreasing eigenvalue.
- :func:`refresh_eigenbasis`: one power-iteration step and a QR decomposition from the previous
  basis, columns sorted by the estimated eigenvalue (the cheap refresh of SOAP).

Transforms: :class:`ShampooPreconditioner` (``L^(-1/4) G R^(-1/4)``), :class:`ScaleBySOAP`
(Adam in the factors' eigenbasis) and :class:`Grafting` (the direction of one transform with the
per-layer step size of another rule: SGD, AdaGrad or Adam).

**The amortisation** ``precondition_frequency`` is a *group hyperparameter*, not a construction
option: it is read every step, so a schedule may change it (frequent refreshes early, rarer
ones later) and a group of small layers may refresh more often than one of large layers; it is
saved with the param groups in the state dict, so a resumed run refreshes on the same steps. The
refresh is decided per parameter from its own step count.

**Dtypes.** Factors, roots, eigenbases and SOAP's moments are kept in float64 for float64
parameters and in float32 otherwise (bf16 and fp16 parameters included: ``eigh`` does not run in
bf16 and the statistics need the range); the update is cast to the parameter's dtype at the
end. **Complex parameters** are refused (``complex_ok = False``): the real view of a complex
matrix is not the matrix whose Kronecker factors these rules mean.

The matrix work runs per parameter (one ``eigh`` or ``qr`` per factor); elementwise parts
(the fallbacks, SOAP's moments) use multi-tensor ops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from gradkit.core.hyperparams import betas, choice, integer, interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList

__all__ = [
    "GRAFTS",
    "Grafting",
    "ScaleBySOAP",
    "ShampooPreconditioner",
    "damped_inverse_root",
    "eigenbasis",
    "factor_dtype",
    "kronecker_sides",
    "refresh_eigenbasis",
    "update_factor",
]

#: the grafting rules: where the per-layer step size comes from
GRAFTS = ("none", "sgd", "adagrad", "adam")

_FREQUENCY = integer("precondition_frequency", 10, low=1)


# ---------------------------------------------------------------------- helpers
def factor_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the statistics kept for a parameter of ``dtype``: float64 or float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def kronecker_sides(
    shape: Sequence[int], max_dim: int, precondition_1d: bool
) -> tuple[int, int, int, int]:
    """``(rows, cols, left, right)``: the matrix view of a parameter of ``shape`` and the sizes
    of its left and right factors (0: that side is not preconditioned)."""
    if len(shape) >= 2:
        rows, cols = int(shape[0]), math.prod(int(s) for s in shape[1:])
        return rows, cols, rows if rows <= max_dim else 0, cols if cols <= max_dim else 0
    n = math.prod(int(s) for s in shape)
    left = n if (len(shape) == 1 and precondition_1d and n <= max_dim) else 0
    return n, 1, left, 0


def update_factor(factor: Tensor, outer: Tensor, beta: float) -> None:
    """``F <- beta F + (1 - beta) outer`` for ``beta < 1``, ``F <- F + outer`` for ``beta = 1``
    (in place)."""
    if beta == 1.0:
        factor.add_(outer)
    else:
        factor.lerp_(outer, 1.0 - beta)


def _eigh(factor: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.linalg.eigh``; a non-finite factor (a NaN gradient let through with
    ``nonfinite="ignore"``) gives NaN results instead of an error, and a float32 factor on which
    LAPACK fails to converge is decomposed in float64."""
    if not bool(torch.isfinite(factor).all()):
        nan = torch.full_like(factor, float("nan"))
        return nan[0], nan
    try:
        return torch.linalg.eigh(factor)
    except torch.linalg.LinAlgError:
        vals, vecs = torch.linalg.eigh(factor.double())
        return vals.to(factor.dtype), vecs.to(factor.dtype)


def damped_inverse_root(factor: Tensor, root: float, eps: float) -> Tensor:
    """``(F + eps I)^(-1/root)`` of a symmetric positive semi-definite ``F``, by ``eigh``.

    Eigenvalues below zero (rounding) are clamped to zero before ``eps`` is added.
    """
    vals, vecs = _eigh(factor)
    scale = (vals.clamp_min(0.0) + eps).pow(-1.0 / root)
    return (vecs * scale) @ vecs.mT


def eigenbasis(factor: Tensor) -> Tensor:
    """The eigenvectors of a symmetric ``F`` as columns, by decreasing eigenvalue."""
    return _eigh(factor)[1].flip(-1)


def refresh_eigenbasis(factor: Tensor, basis: Tensor) -> tuple[Tensor, Tensor]:
    """One power-iteration step from ``basis`` and a QR decomposition: ``(new basis, order)``.

    The columns of ``F Q`` are sorted by the estimated eigenvalues ``diag(Q^T F Q)``, largest
    first, before the QR; ``order`` is that permutation, which SOAP applies to the second moment
    it keeps in the old basis.
    """
    product = factor @ basis
    estimate = (basis * product).sum(dim=0)
    order = torch.argsort(estimate, descending=True)
    q, _ = torch.linalg.qr(product.index_select(1, order))
    return q, order


def _empty(dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.zeros(0, dtype=dtype, device=device)


def _factors(params: TensorList, max_dim: int, precondition_1d: bool, prefix: str) -> State:
    """Zeroed left/right square matrices per parameter (zero-size where a side is off)."""
    left: TensorList = []
    right: TensorList = []
    for p in params:
        _, _, a, b = kronecker_sides(p.shape, max_dim, precondition_1d)
        dt = factor_dtype(p.dtype)
        left.append(torch.zeros(a, a, dtype=dt, device=p.device) if a else _empty(dt, p.device))
        right.append(torch.zeros(b, b, dtype=dt, device=p.device) if b else _empty(dt, p.device))
    return {f"{prefix}_left": left, f"{prefix}_right": right}


def _refresh_due(step: int, frequency: int, offset: int) -> bool:
    return (step - offset) % frequency == 0


# ---------------------------------------------------------------------- Shampoo
class ShampooPreconditioner(GradientTransformation):
    """Shampoo's preconditioned direction ``L^(-1/4) G R^(-1/4)`` per matrix parameter.

    Per step ``t``: the factors take ``G`` (see the module docstring; ``shampoo_beta = 1`` sums
    as the paper does), and on steps ``t = 1, 1 + f, 1 + 2f, ...`` (``f =
    precondition_frequency``) the damped inverse roots ``(L + eps I)^(-1/(2k))``,
    ``(R + eps I)^(-1/(2k))`` are recomputed by eigendecomposition, ``k`` the number of
    preconditioned sides (``k = 2``: the paper's fourth roots; a vector or a matrix with one side
    too long: ``k = 1``, the inverse square root of full-matrix AdaGrad). ``eps = matrix_eps``.
    Output ``L^(-1/2k) G R^(-1/2k)``.

    Fallback for parameters with no preconditioned side (vectors unless ``precondition_1d``,
    scalars): the diagonal of the same statistic, ``v <- beta v + (1 - beta) g^2`` (sum for
    ``beta = 1``), output ``g / sqrt(v + eps)``.

    Gupta, Koren & Singer, "Shampoo: Preconditioned Stochastic Tensor Optimization",
    arXiv 1802.09568.

    State: ``factor_left``, ``factor_right``, ``inv_root_left``, ``inv_root_right`` (square,
    zero-size where a side is off), ``diag_factor`` (fallback; zero-size for matrices).
    """

    flat_ok = False
    complex_ok = False
    hyperparameters = (
        interval("shampoo_beta", 1.0, 0.0, 1.0),
        interval("matrix_eps", 1e-6, 0.0, low_open=True),
        _FREQUENCY,
    )

    def __init__(self, *, max_preconditioner_dim: int = 8192, precondition_1d: bool = False):
        self.max_dim = int(max_preconditioner_dim)
        self.precondition_1d = bool(precondition_1d)

    def init(self, params: TensorList) -> State:
        state = _factors(params, self.max_dim, self.precondition_1d, "factor")
        roots = _factors(params, self.max_dim, self.precondition_1d, "inv_root")
        diag = []
        for p in params:
            _, _, a, b = kronecker_sides(p.shape, self.max_dim, self.precondition_1d)
            dt = factor_dtype(p.dtype)
            diag.append(
                _empty(dt, p.device)
                if (a or b)
                else torch.zeros(p.shape, dtype=dt, device=p.device)
            )
        return {**state, **roots, "diag_factor": diag}

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        beta = float(ctx.group["shampoo_beta"])
        eps = float(ctx.group["matrix_eps"])
        freq = int(ctx.group["precondition_frequency"])
        out: TensorList = [None] * len(updates)  # type: ignore[list-item]
        diag_idx: list[int] = []
        for i, u in enumerate(updates):
            fl, fr = state["factor_left"][i], state["factor_right"][i]
            if fl.numel() == 0 and fr.numel() == 0:
                diag_idx.append(i)
                continue
            rows, cols, _, _ = kronecker_sides(u.shape, self.max_dim, self.precondition_1d)
            g = u.reshape(rows, cols).to(fl.dtype if fl.numel() else fr.dtype)
            refresh = _refresh_due(ctx.steps[i], freq, 1)
            sides = int(fl.numel() > 0) + int(fr.numel() > 0)
            d = g
            if fl.numel():
                update_factor(fl, g @ g.mT, beta)
                il = state["inv_root_left"][i]
                if refresh:
                    il.copy_(damped_inverse_root(fl, 2 * sides, eps))
                d = il @ d
            if fr.numel():
                update_factor(fr, g.mT @ g, beta)
                ir = state["inv_root_right"][i]
                if refresh:
                    ir.copy_(damped_inverse_root(fr, 2 * sides, eps))
                d = d @ ir
            out[i] = d.reshape(u.shape).to(u.dtype)
        if diag_idx:
            v = [state["diag_factor"][i] for i in diag_idx]
            g = [updates[i].to(v[k].dtype) for k, i in enumerate(diag_idx)]
            if beta == 1.0:
                torch._foreach_addcmul_(v, g, g)
            else:
                torch._foreach_mul_(v, beta)
                torch._foreach_addcmul_(v, g, g, 1.0 - beta)
            denom = torch._foreach_add(v, eps)
            torch._foreach_rsqrt_(denom)
            torch._foreach_mul_(denom, g)
            for k, i in enumerate(diag_idx):
                out[i] = denom[k].to(updates[i].dtype)
        return ctx.owned(out)

    def __repr__(self) -> str:
        return (
            f"ShampooPreconditioner(max_preconditioner_dim={self.max_dim}, "
            f"precondition_1d={self.precondition_1d})"
        )


# ---------------------------------------------------------------------- SOAP
class ScaleBySOAP(GradientTransformation):
    """SOAP's direction: Adam in the eigenbasis of Shampoo's factors.

    With ``Q_L, Q_R`` the eigenbases of the factors (identity where a side is off) and
    ``P(X) = Q_L^T X Q_R`` (back: ``P^-1(Y) = Q_L Y Q_R^T``), per step ``t``:

    - ``t = 1``: the factors take ``G`` and the bases are set by eigendecomposition; the output
      is zero (the paper's first step only gathers statistics).
    - ``t >= 2``, ``s = t - 1``: on ``s = 1 + f, 1 + 2f, ...`` (``f = precondition_frequency``)
      the bases are refreshed from the factors by one power-iteration step and QR, sorted by
      estimated eigenvalue, and ``v``'s rows/columns permuted alike; then
      ``m <- b1 m + (1 - b1) G`` (original basis), ``v <- b2 v + (1 - b2) P(G)^2`` (eigenbasis),
      output ``P^-1(P(m) / (sqrt(v) + eps)) * sqrt(1 - b2^s) / (1 - b1^s)``; then the factors
      take ``G`` with ``shampoo_beta`` (EMA).

    Fallback for parameters with no preconditioned side (vectors unless ``precondition_1d``,
    scalars): the same rule with identity bases, i.e. Adam (with this bias correction).

    Cost: ``P(m)`` is kept alongside ``m`` and follows by linearity between refreshes,
    ``P(m) <- b1 P(m) + (1 - b1) P(G)``; it is projected anew from ``m`` on the first moving
    step and on refresh steps only. A step is then three two-sided matrix products (``P(G)``,
    ``P^-1``, the factors' ``G G^T`` and ``G^T G``) instead of four; the result differs from
    projecting ``m`` every step by rounding only (float64: up to 3e-13 after 50 steps in the
    tests). The moment updates run as multi-tensor ops over all parameters past their first
    step.

    Vyas, Morwani, Zhao, Shapira, Brandfonbrener, Janson & Kakade, "SOAP: Improving and
    Stabilizing Shampoo using Adam", arXiv 2409.11321.

    State: ``exp_avg`` (original basis), ``exp_avg_projected`` (``P(m)``; zero-size where both
    bases are the identity), ``exp_avg_sq`` (eigenbasis; all parameter-shaped),
    ``factor_left``, ``factor_right``, ``eigenbasis_left``, ``eigenbasis_right`` (square,
    zero-size where a side is off).
    """

    flat_ok = False
    complex_ok = False
    hyperparameters = (
        betas("betas", (0.95, 0.95)),
        interval("shampoo_beta", 0.95, 0.0, 1.0, high_open=True),
        interval("eps", 1e-8, 0.0, low_open=True),
        _FREQUENCY,
    )

    def __init__(self, *, max_preconditioner_dim: int = 10000, precondition_1d: bool = False):
        self.max_dim = int(max_preconditioner_dim)
        self.precondition_1d = bool(precondition_1d)

    def init(self, params: TensorList) -> State:
        moments = {
            k: [torch.zeros(p.shape, dtype=factor_dtype(p.dtype), device=p.device) for p in params]
            for k in ("exp_avg", "exp_avg_sq")
        }
        projected = []
        for p in params:
            _, _, a, b = kronecker_sides(p.shape, self.max_dim, self.precondition_1d)
            dt = factor_dtype(p.dtype)
            projected.append(
                torch.zeros(p.shape, dtype=dt, device=p.device)
                if (a or b)
                else _empty(dt, p.device)
            )
        return {
            **moments,
            "exp_avg_projected": projected,
            **_factors(params, self.max_dim, self.precondition_1d, "factor"),
            **_factors(params, self.max_dim, self.precondition_1d, "eigenbasis"),
        }

    def fill_missing_state(self, saved: dict[str, Tensor]) -> None:
        """Checkpoints of gradkit 0.2.0 kept no ``exp_avg_projected``: it is ``P(m)`` with the
        saved bases (zero-size where both bases are the identity)."""
        if "exp_avg_projected" in saved or "exp_avg" not in saved:
            return
        m = saved["exp_avg"]
        ql = saved.get("eigenbasis_left", _empty(m.dtype, m.device))
        qr = saved.get("eigenbasis_right", _empty(m.dtype, m.device))
        rows, cols, a, b = kronecker_sides(m.shape, self.max_dim, self.precondition_1d)
        if not (a or b):
            saved["exp_avg_projected"] = _empty(m.dtype, m.device)
        else:
            saved["exp_avg_projected"] = _project(m.reshape(rows, cols), ql, qr).reshape(m.shape)

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        beta1, beta2 = ctx.group["betas"]
        shampoo_beta = float(ctx.group["shampoo_beta"])
        eps = float(ctx.group["eps"])
        freq = int(ctx.group["precondition_frequency"])
        out: TensorList = [None] * len(updates)  # type: ignore[list-item]
        # the parameters past their first step, gathered for multi-tensor moment updates
        idx: list[int] = []
        grads: TensorList = []
        projected: TensorList = []  # P(G)
        moms: TensorList = []  # m (original basis)
        moms_projected: TensorList = []  # P(m): m itself where both bases are the identity
        sqs: TensorList = []
        reproject: list[bool] = []
        corrections: list[float] = []
        for i, u in enumerate(updates):
            m, v = state["exp_avg"][i], state["exp_avg_sq"][i]
            fl, fr = state["factor_left"][i], state["factor_right"][i]
            ql, qr = state["eigenbasis_left"][i], state["eigenbasis_right"][i]
            rows, cols, _, _ = kronecker_sides(u.shape, self.max_dim, self.precondition_1d)
            g = u.reshape(rows, cols).to(m.dtype)
            t = ctx.steps[i]
            if t == 1:
                self._update_factors(g, fl, fr, shampoo_beta)
                if fl.numel():
                    ql.copy_(eigenbasis(fl))
                if fr.numel():
                    qr.copy_(eigenbasis(fr))
                out[i] = torch.zeros_like(u)
                continue
            s = t - 1
            m2, v2 = m.view(rows, cols), v.view(rows, cols)
            mp = state["exp_avg_projected"][i]
            has_basis = bool(fl.numel() or fr.numel())
            refresh = has_basis and s > 1 and _refresh_due(s, freq, 1)
            if refresh:
                if fl.numel():
                    q, order = refresh_eigenbasis(fl, ql)
                    ql.copy_(q)
                    v2.copy_(v2.index_select(0, order))
                if fr.numel():
                    q, order = refresh_eigenbasis(fr, qr)
                    qr.copy_(q)
                    v2.copy_(v2.index_select(1, order))
            idx.append(i)
            grads.append(g)
            projected.append(_project(g, ql, qr))
            moms.append(m2)
            moms_projected.append(mp.view(rows, cols) if has_basis else m2)
            sqs.append(v2)
            # P(m) projected from m: when the bases change, and on the first moving step (m = 0
            # before it; projecting (1 - b1) G rounds as the paper's code does)
            reproject.append(has_basis and (refresh or s == 1))
            corrections.append(math.sqrt(1.0 - beta2**s) / (1.0 - beta1**s))
        if idx:
            # m <- b1 m + (1 - b1) G (original basis). P(m) follows by linearity between
            # refreshes, P(m) <- b1 P(m) + (1 - b1) P(G), and is projected anew from m when the
            # bases change: one projection every f steps instead of one every step.
            torch._foreach_lerp_(moms, grads, 1.0 - beta1)
            linear = [
                k
                for k, i in enumerate(idx)
                if moms_projected[k] is not moms[k] and not reproject[k]
            ]
            if linear:
                torch._foreach_lerp_(
                    [moms_projected[k] for k in linear],
                    [projected[k] for k in linear],
                    1.0 - beta1,
                )
            for k, i in enumerate(idx):
                if reproject[k]:
                    ql, qr = state["eigenbasis_left"][i], state["eigenbasis_right"][i]
                    moms_projected[k].copy_(_project(moms[k], ql, qr))
            # v <- b2 v + (1 - b2) P(G)^2;  D = P^-1(P(m) / (sqrt(v) + eps)) * correction
            squares = torch._foreach_mul(projected, projected)
            torch._foreach_lerp_(sqs, squares, 1.0 - beta2)
            denom = torch._foreach_sqrt(sqs)
            torch._foreach_add_(denom, eps)
            steps = torch._foreach_div(moms_projected, denom)
            steps = [
                _project_back(d, state["eigenbasis_left"][i], state["eigenbasis_right"][i])
                for d, i in zip(steps, idx)
            ]
            torch._foreach_mul_(steps, corrections)
            for k, i in enumerate(idx):
                fl, fr = state["factor_left"][i], state["factor_right"][i]
                self._update_factors(grads[k], fl, fr, shampoo_beta)
                out[i] = steps[k].reshape(updates[i].shape).to(updates[i].dtype)
        return ctx.owned(out)

    @staticmethod
    def _update_factors(g: Tensor, fl: Tensor, fr: Tensor, beta: float) -> None:
        if fl.numel():
            update_factor(fl, g @ g.mT, beta)
        if fr.numel():
            update_factor(fr, g.mT @ g, beta)

    def __repr__(self) -> str:
        return (
            f"ScaleBySOAP(max_preconditioner_dim={self.max_dim}, "
            f"precondition_1d={self.precondition_1d})"
        )


def _project(x: Tensor, ql: Tensor, qr: Tensor) -> Tensor:
    """``Q_L^T X Q_R`` (a zero-size basis is the identity)."""
    if ql.numel():
        x = ql.mT @ x
    if qr.numel():
        x = x @ qr
    return x


def _project_back(x: Tensor, ql: Tensor, qr: Tensor) -> Tensor:
    """``Q_L X Q_R^T`` (a zero-size basis is the identity)."""
    if ql.numel():
        x = ql @ x
    if qr.numel():
        x = x @ qr.mT
    return x


# ---------------------------------------------------------------------- grafting
class Grafting(GradientTransformation):
    """The direction of ``direction`` with the per-parameter (layer-wise) norm of another rule.

    ``out = d * ||a|| / ||d||`` per parameter, ``d = direction(u)`` and ``a`` the step of the
    grafted rule on the same input ``u``:

    - ``"sgd"``: ``a = u``;
    - ``"adagrad"``: ``v <- v + u^2``, ``a = u / (sqrt(v) + graft_eps)``;
    - ``"adam"``: ``v <- b v + (1 - b) u^2`` (``b = graft_beta2``),
      ``a = u / (sqrt(v / (1 - b^t)) + graft_eps)`` (Adam without momentum: RMSProp with
      bias correction; momentum, if any, comes after grafting in the chain);
    - ``"none"``: ``out = d``.

    ``out = 0`` where ``||d|| = 0``. Anil, Gupta, Koren, Regan & Singer, "Scalable Second Order
    Optimization for Deep Learning", arXiv 2002.09018 (grafting: Agarwal, Anil, Hazan, Koren &
    Zhang, "Disentangling Adaptive Gradient Methods from Learning Rates", arXiv 2002.11803).

    State: the direction's state, and ``graft_exp_avg_sq`` (``"adagrad"``/``"adam"``; zero-size
    otherwise).
    """

    flat_ok = False

    def __init__(self, direction: GradientTransformation, graft: str = "adam") -> None:
        if graft not in GRAFTS:
            choice("graft", "adam", GRAFTS).validate(graft)
        self.direction = direction
        self.graft = graft
        own: tuple = ()
        if graft == "adam":
            own = (
                interval("graft_beta2", 0.999, 0.0, 1.0, high_open=True),
                interval("graft_eps", 1e-8, 0.0, low_open=True),
            )
        elif graft == "adagrad":
            own = (interval("graft_eps", 1e-10, 0.0, low_open=True),)
        self.hyperparameters = (*direction.hyperparameters, *own)

    @property
    def complex_ok(self) -> bool:  # type: ignore[override]
        return self.direction.complex_ok

    def check_group(self, group) -> None:  # noqa: ANN001
        self.direction.check_group(group)

    def init(self, params: TensorList) -> State:
        state = dict(self.direction.init(params))
        if self.graft in ("adam", "adagrad"):
            state["graft_exp_avg_sq"] = [
                torch.zeros(p.shape, dtype=factor_dtype(p.dtype), device=p.device) for p in params
            ]
        else:
            state["graft_exp_avg_sq"] = [_empty(factor_dtype(p.dtype), p.device) for p in params]
        return state

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        if self.graft == "none":
            inner = {k: v for k, v in state.items() if k != "graft_exp_avg_sq"}
            return self.direction.update(updates, inner, params, ctx)
        if self.graft == "sgd":
            graft_norms = torch._foreach_norm(updates)
        else:
            v = state["graft_exp_avg_sq"]
            g = [u.to(x.dtype) for u, x in zip(updates, v)]
            if self.graft == "adagrad":
                torch._foreach_addcmul_(v, g, g)
                denom = torch._foreach_sqrt(v)
            else:
                b = float(ctx.group["graft_beta2"])
                torch._foreach_mul_(v, b)
                torch._foreach_addcmul_(v, g, g, 1.0 - b)
                denom = torch._foreach_sqrt(v)
                torch._foreach_div_(denom, ctx.per_step(lambda t: math.sqrt(1.0 - b**t)))
            torch._foreach_add_(denom, float(ctx.group["graft_eps"]))
            graft_norms = torch._foreach_norm(torch._foreach_div(g, denom))
        inner = {k: v for k, v in state.items() if k != "graft_exp_avg_sq"}
        d = self.direction.update(updates, inner, params, ctx)
        d_norms = torch._foreach_norm(d)
        out = []
        for x, gn, dn in zip(d, graft_norms, d_norms):
            dn = dn.to(gn.dtype)
            scale = torch.where(dn > 0, gn / dn.clamp_min(torch.finfo(dn.dtype).tiny), 0.0)
            out.append(x * scale.to(x.dtype))
        return ctx.owned(out)

    def __repr__(self) -> str:
        return f"Grafting({self.direction!r}, graft={self.graft!r})"
