"""Curvature engine: Hessian / Gauss-Newton / empirical-Fisher vector products, Lanczos top
eigenpairs, Hutchinson trace and diagonal, stochastic Lanczos quadrature spectral density and
per-example gradients, and the solvers second-order optimizers share (conjugate gradient, a
Lanczos ``|A|``-inverse solve). See docs/curvature.md and docs/second_order.md."""

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
from gradkit.curvature.solvers import conjugate_gradient, krylov_basis, lanczos_abs_solve

__all__ = [
    "CurvatureOperator",
    "FisherOperator",
    "GaussNewtonOperator",
    "HessianOperator",
    "SpectralDensity",
    "TraceEstimate",
    "conjugate_gradient",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "krylov_basis",
    "lanczos_abs_solve",
    "lanczos_tridiagonal",
    "per_example_gradient_matrix",
    "per_example_gradients",
    "spectral_density",
    "top_eigenpairs",
]
