"""Headless single-axes figures for the tracker and spectrum plots, saved as PNG files.

Figures are built on the Agg canvas without pyplot (no global backend state); matplotlib is
imported only when a plot is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def new_figure() -> tuple[Figure, Axes]:
    """A 6 x 4 inch figure with one axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def save_figure(
    fig: Figure, ax: Axes, path: str | Path, xlabel: str, ylabel: str, title: str
) -> Path:
    """Label ``ax``, add its legend and save ``fig`` to ``path`` at 120 dpi; return the path."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
