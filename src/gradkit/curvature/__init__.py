"""Curvature engine: Hessian / Gauss-Newton / empirical-Fisher vector products, Lanczos top
eigenpairs, Hutchinson trace and diagonal, stochastic Lanczos quadrature spectral density and
per-example gradients. See docs/curvature.md."""

from gradkit.curvature.hutchinson import TraceEstimate, hutchinson_diagonal, hutchinson_trace
from gradkit.curvature.lanczos import lanczos_tridiagonal, top_eigenpairs
from gradkit.curvature.operators import (
    CurvatureOperator,
    FisherOperator,
    GaussNewtonOperator,
    HessianOperator,
)
from gradkit.curvature.per_example import per_example_gradient_matrix, per_example_gradients
from gradkit.curvature.slq import SpectralDensity, spectral_density

__all__ = [
    "CurvatureOperator",
    "FisherOperator",
    "GaussNewtonOperator",
    "HessianOperator",
    "SpectralDensity",
    "TraceEstimate",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "lanczos_tridiagonal",
    "per_example_gradient_matrix",
    "per_example_gradients",
    "spectral_density",
    "top_eigenpairs",
]
