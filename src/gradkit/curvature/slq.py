"""Spectral density of a curvature operator by stochastic Lanczos quadrature (SLQ).

For a unit probe ``v`` and ``m`` Lanczos steps from ``v``, the eigenpairs ``(theta_j, s_j)`` of the
tridiagonal ``T_m`` define an ``m``-node Gauss quadrature of the spectral measure of ``A`` seen by
``v``:  ``v^T f(A) v ~ sum_j tau_j f(theta_j)`` with ``tau_j = s_j[0]^2`` (Golub & Meurant).
Averaging over random probes (``E[v v^T] = I / n``) approximates the eigenvalue density
``phi(t) = (1/n) sum_i delta(t - lambda_i)``; convolving with a Gaussian of width ``sigma`` gives a
smooth curve (Lin, Saad & Yang, "Approximating spectral densities of large matrices",
arXiv 1308.5467; Ghorbani, Krishnan & Xiao, "An Investigation into Neural Net Optimization via
Hessian Eigenvalue Density", arXiv 1901.10159). The nodes reach the extreme eigenvalues
(the outliers) quickly, while the bulk is resolved by the weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from gradkit.curvature._utils import (
    FlatMatvec,
    check_int_at_least,
    check_positive,
    check_positive_int,
)
from gradkit.curvature.hutchinson import _rademacher
from gradkit.curvature.lanczos import lanczos_tridiagonal
from gradkit.curvature.operators import CurvatureOperator


@dataclass
class SpectralDensity:
    """Quadrature nodes and weights of the estimated eigenvalue distribution.

    ``nodes``/``weights``: 1-D float64 tensors (all probes together; the weights sum to 1).
    ``grid``/``density``: the Gaussian-smoothed density on a grid (integrates to ~1).
    ``sigma``: the smoothing width; ``dim``: the operator size ``n``; ``num_matvecs``: products.
    """

    nodes: Tensor
    weights: Tensor
    grid: Tensor
    density: Tensor
    sigma: float
    dim: int
    num_matvecs: int

    def evaluate(self, t: Tensor, sigma: float | None = None) -> Tensor:
        """The smoothed density at points ``t`` (Gaussian kernel of width ``sigma``)."""
        check_positive("sigma", sigma, allow_none=True)
        sig = self.sigma if sigma is None else sigma
        t = t.to(torch.float64)
        z = (t[:, None] - self.nodes[None, :]) / sig
        return (self.weights[None, :] * torch.exp(-0.5 * z**2)).sum(1) / (
            sig * math.sqrt(2 * math.pi)
        )

    def cdf(self, t: Tensor) -> Tensor:
        """Fraction of eigenvalues ``<= t`` according to the quadrature (unsmoothed)."""
        t = t.to(torch.float64)
        return (self.weights[None, :] * (self.nodes[None, :] <= t[:, None])).sum(1)

    def trace(self) -> float:
        """The trace implied by the quadrature: ``n * sum_j tau_j theta_j``."""
        return float(self.dim * (self.weights * self.nodes).sum())


def spectral_density(
    op: CurvatureOperator,
    num_steps: int = 80,
    num_probes: int = 1,
    seed: int = 0,
    sigma: float | None = None,
    num_points: int = 1024,
) -> SpectralDensity:
    """Estimate the eigenvalue density of ``op`` by stochastic Lanczos quadrature.

    Args:
        op: the curvature operator.
        num_steps: Lanczos steps per probe (capped at ``op.dim``); the cost is
            ``num_steps * num_probes`` products.
        num_probes: independent Rademacher probes averaged.
        seed: seed of the probes.
        sigma: Gaussian smoothing width; default ``(max node - min node) / 100``.
        num_points: size of the evaluation grid, which extends ``5 sigma`` beyond the nodes.
    """
    check_positive_int("num_steps", num_steps)
    check_positive_int("num_probes", num_probes)
    check_positive("sigma", sigma, allow_none=True)
    check_int_at_least("num_points", num_points, 2)
    params = op.params
    n = op.dim
    dtype, device = params[0].dtype, params[0].device
    gen = torch.Generator().manual_seed(seed)
    matvec = FlatMatvec(op)
    all_nodes, all_weights = [], []
    for p in range(num_probes):
        v = _rademacher(n, gen, dtype, device)
        v = v / v.norm()
        alphas, betas = lanczos_tridiagonal(matvec, v, num_steps, seed=seed + 7919 * (p + 1))
        m = alphas.numel()
        t = torch.diag(alphas)
        if m > 1:
            t = t + torch.diag(betas, 1) + torch.diag(betas, -1)
        theta, s = torch.linalg.eigh(t)
        all_nodes.append(theta)
        all_weights.append(s[0, :] ** 2 / num_probes)
    nodes = torch.cat(all_nodes)
    weights = torch.cat(all_weights)
    lo, hi = float(nodes.min()), float(nodes.max())
    if sigma is None:
        sigma = (hi - lo) / 100 if hi > lo else max(abs(hi), 1.0) * 1e-2
    grid = torch.linspace(lo - 5 * sigma, hi + 5 * sigma, num_points, dtype=torch.float64)
    out = SpectralDensity(
        nodes=nodes,
        weights=weights,
        grid=grid,
        density=torch.zeros(0),
        sigma=sigma,
        dim=n,
        num_matvecs=matvec.count,
    )
    out.density = out.evaluate(grid)
    return out
