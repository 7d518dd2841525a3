"""The plot helpers draw and save without a display."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradkit.diagnostics.connectivity import InterpolationResult
from gradkit.diagnostics.intrinsic_dimension import IntrinsicDimensionResult
from gradkit.diagnostics.landscape_plots import (
    plot_interpolation,
    plot_intrinsic_dimension,
    plot_roughness,
    plot_score_histogram,
)
from gradkit.diagnostics.roughness import roughness_index_from_slices


def _saved(fig, path) -> int:
    fig.savefig(path)
    return path.stat().st_size


def test_plots(tmp_path):
    t = np.linspace(0, 1, 11)
    r = InterpolationResult(t, 1 + np.sin(np.pi * t), t, 1.0, 0.5)
    assert _saved(plot_interpolation({"a": r, "b": r}), tmp_path / "i.png") > 1000
    assert _saved(plot_interpolation(r, metric=True), tmp_path / "m.png") > 1000
    no_metric = InterpolationResult(t, t, None, 0.0, 0.0)
    with pytest.raises(ValueError, match="metric_fn"):
        plot_interpolation(no_metric, metric=True)
    res = IntrinsicDimensionResult([1, 10, 100], [0.2, 0.7, 0.9], 0.95, 0.9, 100)
    assert _saved(plot_intrinsic_dimension(res), tmp_path / "d.png") > 1000
    a = np.linspace(-1, 1, 41)
    rough = roughness_index_from_slices([a, a**2, np.cos(3 * np.pi * a)], a)
    assert _saved(plot_roughness(rough), tmp_path / "r.png") > 1000
    scores = {"EL2N": torch.rand(100), "GraNd": np.random.default_rng(0).random(100)}
    assert _saved(plot_score_histogram(scores), tmp_path / "s.png") > 1000
