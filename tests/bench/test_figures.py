"""What the report's figures contain: axis labels, colour bars, distinguishable paths, and the
same statistic (mean ± 95% Student-t interval over seeds) in every band and bar, named in the
legend. The figures are captured before they are written, and their artists inspected."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from tiny_task import TINY

from gradkit.bench.execution.train import RunResult
from gradkit.bench.execution.trajectories import Trajectory
from gradkit.bench.protocol.stats import STATISTIC, mean_ci
from gradkit.bench.report import plots
from gradkit.bench.report.results import OptimizerResult, TrialResult


@pytest.fixture
def figures(monkeypatch):
    """Figures the plot functions make, by file name (kept open instead of written)."""
    made = {}

    def keep(fig, path):
        made[path.name] = fig
        return path

    monkeypatch.setattr(plots, "_save", keep)
    yield made
    import matplotlib.pyplot as plt

    for fig in made.values():
        plt.close(fig)


VALS = {0: [0.2, 0.6, 0.80], 1: [0.3, 0.7, 0.90], 2: [0.1, 0.5, 0.85]}


def _result(name: str, shift: float) -> OptimizerResult:
    runs = [
        RunResult(
            seed=s,
            steps=[10, 20, 30],
            train_loss=[1.0, 0.5 + shift, 0.2],
            val=[v + shift for v in vals],
            wall=[0.1, 0.2, 0.3],
            final_val=vals[-1] + shift,
            best_val=vals[-1] + shift,
        )
        for s, vals in VALS.items()
    ]
    trials = [
        TrialResult(0, 1e-3, {"lr": 1e-3}, 0.5, [RunResult(seed=s, final_val=0.5) for s in VALS]),
        TrialResult(1, 1e-2, {"lr": 1e-2}, float(np.mean([r.final_val for r in runs])), runs),
    ]
    return OptimizerResult(TINY, name, name, trials, planned=2, lr_range=(1e-3, 1e-2))


def test_curves_band_is_the_t_interval_named_in_the_legend(figures, tmp_path):
    plots.plot_curves([_result("adamw", 0.0), _result("lion", 0.01)], tmp_path / "c.png")
    fig = figures["c.png"]
    loss_ax, val_ax, wall_ax = fig.axes[:3]
    assert (val_ax.get_xlabel(), val_ax.get_ylabel()) == ("step", "accuracy")
    assert loss_ax.get_ylabel() == "train loss" and wall_ax.get_xlabel().startswith("training")
    legend = [t.get_text() for t in val_ax.get_legend().get_texts()]
    assert f"band: {STATISTIC}" in legend
    assert STATISTIC in fig._suptitle.get_text()
    # the band of the first optimizer at the last step: mean ± t interval over the 3 seeds
    band = [c for c in val_ax.collections if isinstance(c, PolyCollection)][0]
    verts = band.get_paths()[0].vertices
    at_end = verts[np.isclose(verts[:, 0], 30.0)][:, 1]
    mean, half = mean_ci([v[-1] for v in VALS.values()])
    assert sorted(set(np.round(at_end, 12))) == pytest.approx([mean - half, mean + half])
    # the lines carry distinct markers
    lines = [
        ln for ln in val_ax.get_lines() if ln.get_label() in ("adamw (lr=0.01)", "lion (lr=0.01)")
    ]
    assert len({ln.get_marker() for ln in lines}) == 2


def test_lr_sensitivity_bars_are_the_same_statistic(figures, tmp_path):
    plots.plot_lr_sensitivity([_result("adamw", 0.0)], tmp_path / "s.png")
    ax = figures["s.png"].axes[0]
    assert ax.get_xlabel() == "learning rate" and ax.get_ylabel() == "final accuracy"
    assert STATISTIC in ax.get_title()
    assert STATISTIC in ax.get_legend().get_title().get_text()
    container = ax.containers[0]
    x, y = container.lines[0].get_data()
    assert list(x) == pytest.approx([1e-3, 1e-2])
    mean, half = mean_ci([v[-1] for v in VALS.values()])
    assert y[1] == pytest.approx(mean)
    seg = container.lines[2][0].get_segments()[1]
    assert seg[1][1] - seg[0][1] == pytest.approx(2 * half)


def test_time_to_target_has_axis_labels(figures, tmp_path):
    plots.plot_time_to_target([_result("adamw", 0.0)], tmp_path / "t.png")
    ax = figures["t.png"].axes[0]
    assert ax.get_ylabel() == "steps to target" and ax.get_xlabel().startswith("optimizer")


def test_trajectories_have_labels_a_colour_bar_and_distinguishable_paths(figures, tmp_path):
    t = np.linspace(0, 1, 60)
    path = np.column_stack([-1 + 2 * t, 1 - t * (1 - t)]).tolist()
    same = [Trajectory("rosenbrock", n, 0.01, path, 0.0) for n in ("adamw", "lion", "muon")]
    plots.plot_trajectories({"rosenbrock": same}, tmp_path / "tr.png")
    fig = figures["tr.png"]
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("x", "y")
    colorbars = [a for a in fig.axes[1:] if a.get_label() == "<colorbar>"]
    assert colorbars and "f(x, y)" in colorbars[0].get_ylabel()
    lines = [ln for ln in ax.get_lines() if ln.get_label().split()[0] in ("adamw", "lion", "muon")]
    assert len(lines) == 3
    for ln in lines:  # each draws the optimizer's own path
        assert np.column_stack(ln.get_data()) == pytest.approx(np.asarray(path))
    # paths with the same lr stay distinguishable: markers, dashes and marker offsets differ
    assert len({ln.get_marker() for ln in lines}) == 3
    assert len({ln.get_linestyle() for ln in lines}) == 3
    assert len({str(ln.get_markevery()) for ln in lines}) == 3


def test_the_figures_written_are_pngs(tmp_path):
    out = plots.plot_curves([_result("adamw", 0.0)], tmp_path / "c.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
