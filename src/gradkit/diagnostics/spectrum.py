"""Hessian eigenvalue spectrum: a bulk near zero and a few outliers.

Sagun, Evci, Guney, Dauphin & Bottou, "Empirical Analysis of the Hessian of Over-Parametrized
Neural Networks" (arXiv 1706.04454) find that the spectrum has a bulk concentrated
near zero and a small number of outliers (about the number of classes) far from it. This module
estimates the full density by stochastic Lanczos quadrature
(:func:`gradkit.curvature.spectral_density`), the top eigenvalues by Lanczos, separates the
outliers from the bulk, and plots both (log-density, outliers marked).

Outliers are the top eigenvalues above the largest relative gap: with ``l_1 >= ... >= l_k`` the
top eigenvalues, the split is at the ``i`` maximising ``l_i / l_{i+1}``, and it is kept only if that
ratio is at least ``min_gap``; the bulk edge is ``l_{i+1}``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from gradkit.curvature import HessianOperator, spectral_density, top_eigenpairs
from gradkit.curvature._utils import check_positive_int, is_real
from gradkit.curvature.slq import SpectralDensity
from gradkit.diagnostics._plotting import new_figure, save_figure
from gradkit.errors import invalid_value

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class HessianSpectrum:
    """The SLQ density, the top eigenvalues and their split into outliers and bulk."""

    density: SpectralDensity
    top_eigenvalues: list[float]
    outliers: list[float]
    bulk_edge: float | None
    num_matvecs: int


def _check_min_gap(min_gap: object) -> None:
    if not (is_real(min_gap) and min_gap > 1):  # type: ignore[operator]
        raise invalid_value("min_gap", min_gap, "a number > 1")


def split_outliers(
    eigenvalues: Sequence[float], min_gap: float = 2.0
) -> tuple[list[float], float | None]:
    """Outliers (largest first) and the bulk edge by the largest ratio gap (see module doc)."""
    _check_min_gap(min_gap)
    vals = sorted((float(v) for v in eigenvalues), reverse=True)
    best_i, best_ratio = -1, 0.0
    for i in range(len(vals) - 1):
        lo = vals[i + 1]
        ratio = vals[i] / lo if lo > 0 else float("inf") if vals[i] > 0 else 0.0
        if ratio > best_ratio:
            best_i, best_ratio = i, ratio
    if best_i < 0 or best_ratio < min_gap:
        return [], None
    return vals[: best_i + 1], vals[best_i + 1]


def hessian_spectrum(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    num_steps: int = 80,
    num_probes: int = 1,
    k: int = 20,
    params: Sequence[Tensor] | None = None,
    max_samples: int | None = None,
    sigma: float | None = None,
    min_gap: float = 2.0,
    seed: int = 0,
) -> HessianSpectrum:
    """SLQ density (``num_steps * num_probes`` products) plus the top-``k`` eigenvalues.

    ``k`` should exceed the expected number of outliers (e.g. 2 x number of classes); it is
    capped at the number of parameters.
    """
    check_positive_int("k", k)
    _check_min_gap(min_gap)
    op = HessianOperator(model, loss_fn, data, params=params, max_samples=max_samples)
    k = min(k, op.dim)
    dens = spectral_density(op, num_steps=num_steps, num_probes=num_probes, seed=seed, sigma=sigma)
    top, _ = top_eigenpairs(op, k=k, tol=1e-3, max_iter=max(3 * k, 60), seed=seed)
    outliers, edge = split_outliers(top.tolist(), min_gap=min_gap)
    return HessianSpectrum(
        density=dens,
        top_eigenvalues=[float(v) for v in top],
        outliers=outliers,
        bulk_edge=edge,
        num_matvecs=op.num_matvecs,
    )


def plot_spectrum(
    spectrum: HessianSpectrum | SpectralDensity,
    path: str | Path,
    log_density: bool = True,
    title: str | None = None,
) -> Path:
    """Plot the smoothed density (log scale by default) with the outliers marked."""
    dens = spectrum.density if isinstance(spectrum, HessianSpectrum) else spectrum
    fig, ax = new_figure()
    y = dens.density.clamp_min(1e-12) if log_density else dens.density
    ax.plot(dens.grid.numpy(), y.numpy(), lw=1.2, label="SLQ density")
    if log_density:
        ax.set_yscale("log")
        ax.set_ylim(max(float(y.max()) * 1e-8, 1e-12), float(y.max()) * 3)
    if isinstance(spectrum, HessianSpectrum):
        ax.plot(
            spectrum.top_eigenvalues,
            [ax.get_ylim()[0] * (3 if log_density else 1)] * len(spectrum.top_eigenvalues),
            "|",
            color="C2",
            ms=12,
            label="top-k (Lanczos)",
        )
        for i, v in enumerate(spectrum.outliers):
            ax.axvline(v, color="C3", ls="--", lw=0.8, label="outliers" if i == 0 else None)
        if spectrum.bulk_edge is not None:
            ax.axvline(spectrum.bulk_edge, color="k", ls=":", lw=0.8, label="bulk edge")
    title = title or "Hessian spectrum (stochastic Lanczos quadrature)"
    return save_figure(fig, ax, path, "eigenvalue", "density", title)
