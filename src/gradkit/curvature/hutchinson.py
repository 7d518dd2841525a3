"""Stochastic trace and diagonal estimation: Hutchinson and Hutch++.

Hutchinson (Hutchinson, "A stochastic estimator of the trace of the influence matrix for
Laplacian smoothing splines", 1990): for Rademacher ``z`` (entries +-1), ``E[z^T A z] = tr(A)``;
the estimate is the mean of ``m`` samples and its error bar the sample standard deviation over
``sqrt(m)``. The same probes give the diagonal: ``E[z * (A z)] = diag(A)`` (Bekas, Kokiopoulou &
Saad, "An estimator for the diagonal of a matrix", 2007).

Hutch++ (Meyer, Musco, Musco & Woodruff, "Hutch++: Optimal Stochastic Trace Estimation",
arXiv 2010.09649): spend ``s`` products on a sketch ``Q = orth(A S)`` of the top of the spectrum,
``s`` more on its exact trace ``tr(Q^T A Q)``, and the rest on Hutchinson for the deflated
remainder ``(I - QQ^T) A (I - QQ^T)``. When a few large eigenvalues dominate (typical for neural
network Hessians: the outliers of Sagun et al.) the remainder has much smaller variance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gradkit.curvature._utils import (
    FlatMatvec,
    check_int_at_least,
    check_positive,
    check_positive_int,
    is_int,
    unflatten,
)
from gradkit.curvature.operators import CurvatureOperator
from gradkit.errors import invalid_value

_METHODS = ("hutchinson", "hutch++")


@dataclass
class TraceEstimate:
    """A stochastic trace estimate with its error bar.

    ``value``: the estimate; ``stderr``: standard error from the samples (Hutch++: from the
    residual samples; the sketch part is exact); ``samples``: the per-probe values ``z^T A z``;
    ``num_matvecs``: products used; ``method``: ``"hutchinson"`` or ``"hutch++"``.
    """

    value: float
    stderr: float
    samples: Tensor
    num_matvecs: int
    method: str

    def __float__(self) -> float:
        return self.value


def _rademacher(n: int, gen: torch.Generator, dtype: torch.dtype, device: torch.device) -> Tensor:
    z = torch.randint(0, 2, (n,), generator=gen).to(dtype=dtype, device=device)
    return z.mul_(2).sub_(1)


def _stderr(samples: Tensor) -> float:
    m = samples.numel()
    return float(samples.std(unbiased=True) / m**0.5) if m > 1 else float("inf")


def _check(num_samples: int, tol: float | None, min_samples: int) -> None:
    check_positive_int("num_samples", num_samples)
    check_positive("tol", tol, allow_none=True)
    check_int_at_least("min_samples", min_samples, 2)


def hutchinson_trace(
    op: CurvatureOperator,
    num_samples: int = 100,
    tol: float | None = None,
    seed: int = 0,
    method: str = "hutchinson",
    min_samples: int = 10,
    sketch_size: int | None = None,
) -> TraceEstimate:
    """Estimate ``tr(A)`` of a curvature operator.

    Args:
        op: the operator (``matvec`` and ``params``).
        num_samples: the budget of products with ``A`` (Hutch++: the total, sketch included).
        tol: if given, stop early once ``stderr <= tol * |estimate|`` (after ``min_samples``).
        seed: seed of the random probes.
        method: ``"hutchinson"`` (plain, Rademacher probes) or ``"hutch++"``.
        min_samples: smallest number of residual probes before the ``tol`` test is applied.
        sketch_size: Hutch++ sketch width ``s`` (default ``num_samples // 3``); the sketch costs
            ``2 s`` products.
    """
    _check(num_samples, tol, min_samples)
    if method not in _METHODS:
        raise invalid_value("method", method, f"one of {_METHODS}")
    width = 0  # hutch++ sketch width
    if method == "hutch++":
        if sketch_size is None:
            if num_samples < 3:
                raise invalid_value("num_samples", num_samples, "an integer >= 3 for hutch++")
            width = num_samples // 3
        elif not is_int(sketch_size) or not 1 <= sketch_size < num_samples / 2:
            raise invalid_value(
                "sketch_size",
                sketch_size,
                f"an integer in [1, {num_samples / 2:g}) for hutch++ with num_samples={num_samples}",
            )
        else:
            width = int(sketch_size)
    params = op.params
    n = op.dim
    dtype, device = params[0].dtype, params[0].device
    gen = torch.Generator().manual_seed(seed)
    matvec = FlatMatvec(op)
    exact = 0.0
    q: Tensor | None = None
    if method == "hutch++":
        s = min(width, n)
        sketch = torch.stack([matvec(_rademacher(n, gen, dtype, device)) for _ in range(s)], 1)
        q, _ = torch.linalg.qr(sketch)  # [n, s]
        exact = sum(float(q[:, i] @ matvec(q[:, i].contiguous())) for i in range(s))
        budget = num_samples - 2 * s
    else:
        budget = num_samples
    vals: list[float] = []
    for i in range(budget):
        z = _rademacher(n, gen, dtype, device)
        if q is not None:
            z = z - q @ (q.T @ z)
        vals.append(float(z @ matvec(z)))
        if tol is not None and i + 1 >= min_samples:
            t = torch.tensor(vals, dtype=torch.float64)
            if _stderr(t) <= tol * abs(exact + float(t.mean())):
                break
    samples = torch.tensor(vals, dtype=torch.float64)
    mean = float(samples.mean()) if vals else 0.0
    return TraceEstimate(
        value=exact + mean,
        stderr=_stderr(samples) if vals else 0.0,
        samples=samples,
        num_matvecs=matvec.count,
        method=method,
    )


def hutchinson_diagonal(
    op: CurvatureOperator,
    num_samples: int = 100,
    seed: int = 0,
) -> list[Tensor]:
    """Estimate ``diag(A)`` as the mean of ``z * (A z)`` over Rademacher probes ``z``.

    Returns a list of tensors shaped like ``op.params``. The error of each entry falls like
    ``1 / sqrt(num_samples)`` (its variance is the sum of squared off-diagonal row entries).
    """
    _check(num_samples, None, 2)
    params = op.params
    n = op.dim
    dtype, device = params[0].dtype, params[0].device
    gen = torch.Generator().manual_seed(seed)
    matvec = FlatMatvec(op)
    acc = torch.zeros(n, dtype=dtype, device=device)
    for _ in range(num_samples):
        z = _rademacher(n, gen, dtype, device)
        acc += z * matvec(z)
    return [t.clone() for t in unflatten(acc / num_samples, params)]
