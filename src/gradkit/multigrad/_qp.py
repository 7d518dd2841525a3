"""Exact solver for the small quadratic program behind UPGrad's dual-cone projection.

``min_v v^T G v  subject to  v >= u`` for a symmetric positive semi-definite ``k x k`` matrix
``G`` (``k`` = number of gradients, small). With ``z = v - u`` it is the non-negative QP
``min_{z >= 0} z^T G z + 2 z^T G u``, solved by an active-set method in the style of
Lawson and Hanson's NNLS: it terminates after finitely many steps at a point satisfying the KKT
conditions ``z >= 0``, ``G v >= 0``, ``z_i (G v)_i = 0`` up to rounding, so its answer is the
QP's solution to float64 rounding (no iteration tolerance is involved).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _solve_free(gram: Tensor, rhs: Tensor) -> Tensor:
    # minimum-norm least squares: well defined when the free block is singular (reg_eps = 0)
    return torch.linalg.lstsq(gram, rhs.unsqueeze(1), driver="gelsd").solution.squeeze(1)


def project_weights(u: Tensor, gram: Tensor, max_iter: int | None = None) -> Tensor:
    """The ``v`` solving ``min v^T G v s.t. v >= u`` (float64, CPU tensors of shape ``[k]``, ``[k, k]``)."""
    k = u.shape[0]
    gu = gram @ u
    scale = float(gram.diagonal().abs().max()) * float(u.abs().max()) if k else 0.0
    tol = 1e-13 * max(scale, 1e-300)
    z = torch.zeros_like(u)
    free = torch.zeros(k, dtype=torch.bool)
    limit = max_iter if max_iter is not None else 10 * k + 10
    for _ in range(limit):
        neg_grad = -(gram @ z + gu)
        cand = torch.where(free, torch.full_like(neg_grad, -float("inf")), neg_grad)
        if bool(free.all()) or float(cand.max()) <= tol:
            break
        free[int(torch.argmax(cand))] = True
        for _inner in range(limit):
            idx = free.nonzero().squeeze(1)
            s = torch.zeros_like(z)
            s[idx] = _solve_free(gram[idx][:, idx], -gu[idx])
            if bool((s[idx] > 0).all()):
                z = s
                break
            bad = idx[s[idx] <= 0]
            ratios = z[bad] / (z[bad] - s[bad])
            alpha = torch.min(ratios)
            z = z + alpha * (s - z)
            z[bad[ratios == alpha]] = 0.0  # the blocking constraint becomes active exactly
            free &= z > 0
            z = torch.where(free, z, torch.zeros_like(z))
    return u + z
