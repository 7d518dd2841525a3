"""Plots for the landscape, connectivity and intrinsic-dimension diagnostics.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot, no global backend state), so
they work headless; save them with ``fig.savefig(path)``. Each helper accepts an optional
``ax`` to draw into an existing figure and returns the figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from gradkit._optional import import_optional
from gradkit.diagnostics.connectivity import InterpolationResult
from gradkit.diagnostics.landscape import Slice1D, Slice2D

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _axes(ax: Axes | None, projection: str | None = None) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax  # type: ignore[return-value]
    figure = import_optional("matplotlib.figure", "landscape plots")
    fig = figure.Figure(figsize=(6.0, 4.8), layout="constrained")
    ax = fig.add_subplot(1, 1, 1, projection=projection)
    ax.locator_params(nbins=5)
    return fig, ax


def plot_slice_1d(
    slices: Slice1D | Mapping[str, Slice1D],
    ax: Axes | None = None,
    log: bool = False,
    title: str | None = None,
) -> Figure:
    """Loss along one or several 1-D slices (a mapping gives one labelled curve each)."""
    fig, ax = _axes(ax)
    items = slices.items() if isinstance(slices, Mapping) else [(None, slices)]
    for label, s in items:
        ax.plot(s.alphas, s.losses, marker=".", label=label)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("step along direction")
    ax.set_ylabel("loss")
    if isinstance(slices, Mapping):
        ax.legend()
    ax.set_title(title or "1-D loss slice")
    return fig


def plot_contour(
    surface: Slice2D,
    ax: Axes | None = None,
    levels: int = 30,
    log: bool = False,
    title: str | None = None,
) -> Figure:
    """Filled contour plot of a 2-D slice, with the centre point marked."""
    fig, ax = _axes(ax)
    z = np.log10(np.maximum(surface.losses, 1e-12)) if log else surface.losses
    cs = ax.contourf(surface.alphas, surface.betas, z, levels=levels, cmap="viridis")
    ax.contour(surface.alphas, surface.betas, z, levels=levels, colors="k", linewidths=0.3)
    fig.colorbar(cs, ax=ax, label="log10 loss" if log else "loss")
    ax.plot([0.0], [0.0], marker="*", color="red", markersize=10)
    ax.set_xlabel("direction 1")
    ax.set_ylabel("direction 2")
    ax.set_title(title or "loss contours")
    return fig


def plot_surface(
    surface: Slice2D, ax: Axes | None = None, log: bool = False, title: str | None = None
) -> Figure:
    """3-D surface plot of a 2-D slice."""
    fig, ax = _axes(ax, projection="3d")
    a, b = np.meshgrid(surface.alphas, surface.betas)
    z = np.log10(np.maximum(surface.losses, 1e-12)) if log else surface.losses
    ax.plot_surface(a, b, z, cmap="viridis", linewidth=0, antialiased=True)  # type: ignore[attr-defined]
    ax.set_xlabel("direction 1")
    ax.set_ylabel("direction 2")
    ax.set_zlabel("log10 loss" if log else "loss")  # type: ignore[attr-defined]
    ax.set_title(title or "loss surface")
    return fig


def plot_interpolation(
    results: InterpolationResult | Mapping[str, InterpolationResult],
    ax: Axes | None = None,
    metric: bool = False,
    title: str | None = None,
) -> Figure:
    """Loss (or metric) along linear interpolations, with each barrier in the legend."""
    fig, ax = _axes(ax)
    items = results.items() if isinstance(results, Mapping) else [("", results)]
    for label, r in items:
        y = r.metrics if metric else r.losses
        if y is None:
            raise ValueError("the interpolation was run without metric_fn")
        ax.plot(r.alphas, y, marker=".", label=f"{label} (barrier {r.barrier:.3g})".strip())
    ax.set_xlabel("t  (0 = model A, 1 = model B)")
    ax.set_ylabel("metric" if metric else "loss")
    ax.legend()
    ax.set_title(title or "linear interpolation")
    return fig


def plot_intrinsic_dimension(result: Any, ax: Axes | None = None) -> Figure:
    """Performance against subspace dimension, with the 90% threshold and ``d_int90``."""
    fig, ax = _axes(ax)
    dims: Sequence[int] = result.dims
    ax.plot(dims, result.performance, marker="o", label="subspace training")
    ax.axhline(result.full_performance, color="gray", ls="--", label="full training")
    ax.axhline(
        result.threshold * result.full_performance,
        color="gray",
        ls=":",
        label=f"{result.threshold:.0%} of full",
    )
    if result.d_int is not None:
        ax.axvline(result.d_int, color="red", ls=":", label=f"d_int = {result.d_int}")
    ax.set_xscale("log")
    ax.set_xlabel("subspace dimension d")
    ax.set_ylabel("performance")
    ax.legend()
    ax.set_title("intrinsic dimension")
    return fig


def plot_roughness(result: Any, ax: Axes | None = None) -> Figure:
    """The 1-D slices behind a roughness index, each rescaled to [0, 1] (min-max)."""
    fig, ax = _axes(ax)
    for row, nu in zip(result.slices, result.normalized_tv):
        span = row.max() - row.min()
        y = (row - row.min()) / span if span > 0 else np.zeros_like(row)
        ax.plot(result.alphas, y, lw=1, alpha=0.8, label=f"nu = {nu:.2f}")
    ax.set_xlabel("step along direction")
    ax.set_ylabel("loss, rescaled to [0, 1]")
    ax.legend(fontsize="x-small")
    ax.set_title(f"roughness index {result.index:.3g} (mean nu {result.mean:.2f})")
    return fig


def plot_score_histogram(
    scores: Mapping[str, Any], ax: Axes | None = None, bins: int = 40
) -> Figure:
    """Histograms of per-example scores (e.g. ``{"EL2N": el2n, "GraNd": grand}``)."""
    fig, ax = _axes(ax)
    for name, values in scores.items():
        v = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values)
        ax.hist(v, bins=bins, alpha=0.6, label=name)
    ax.set_xlabel("score")
    ax.set_ylabel("examples")
    ax.legend()
    ax.set_title("per-example scores")
    return fig
