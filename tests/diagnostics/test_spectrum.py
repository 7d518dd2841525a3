"""Hessian spectrum: SLQ density integrates to one and puts its mass at the dense eigenvalues."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradkit.diagnostics.spectrum import hessian_spectrum, plot_spectrum, split_outliers
from helpers import single_threaded_tests  # noqa: F401  (autouse: one intra-op thread)


def _spiked_regression(d: int = 40, spikes=(60.0, 45.0, 30.0)):
    """Linear model + MSE with H = 2 X^T X / n: bulk eigenvalues in [0.1, 1] plus spikes."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    ev = torch.cat(
        [torch.tensor(spikes, dtype=torch.float64), torch.linspace(0.1, 1.0, d - 3).double()]
    )
    n = d
    # X with X^T X / n * 2 = Q diag(ev) Q^T
    x = (q * (ev * n / 2).sqrt()).T  # rows: n = d examples
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    model = nn.Linear(d, 1, bias=False).double()
    return model, x, y, ev


def test_density_integrates_to_one_and_finds_outliers(tmp_path):
    model, x, y, ev = _spiked_regression()
    hess = 2.0 * x.T @ x / x.shape[0]
    torch.testing.assert_close(torch.linalg.eigvalsh(hess), ev.sort().values)
    spec = hessian_spectrum(
        model, nn.functional.mse_loss, (x, y), num_steps=20, num_probes=30, k=6, sigma=0.2
    )
    d = spec.density
    assert float(torch.trapezoid(d.density, d.grid)) == pytest.approx(1.0, abs=1e-3)
    # mass where the dense eigenvalues are: 37/40 in the bulk [0.1, 1], 3/40 at the spikes
    bulk_mass = float(d.weights[(d.nodes > 0.05) & (d.nodes < 1.05)].sum())
    assert bulk_mass == pytest.approx(37 / 40, abs=0.06)
    spike_mass = float(d.weights[d.nodes > 20].sum())
    assert spike_mass == pytest.approx(3 / 40, abs=0.06)
    assert float(d.weights[(d.nodes > 1.05) & (d.nodes < 20)].sum()) < 0.02
    # outliers: the three spikes; the bulk edge is the top of the bulk
    assert spec.outliers == pytest.approx([60.0, 45.0, 30.0], rel=1e-6)
    assert spec.bulk_edge == pytest.approx(1.0, rel=1e-3)
    out = plot_spectrum(spec, tmp_path / "spec.png")
    assert out.stat().st_size > 1000
    assert plot_spectrum(spec.density, tmp_path / "d.png", log_density=False).exists()


def test_split_outliers():
    assert split_outliers([10.0, 9.0, 1.0, 0.9, 0.5]) == ([10.0, 9.0], 1.0)
    assert split_outliers([1.0, 0.9, 0.8]) == ([], None)
    with pytest.raises(ValueError, match="min_gap"):
        split_outliers([1.0], min_gap=1.0)


def test_errors():
    model, x, y, _ = _spiked_regression()
    with pytest.raises(ValueError, match="num_steps"):
        hessian_spectrum(model, nn.functional.mse_loss, (x, y), num_steps=0)
    with pytest.raises(ValueError, match="empty"):
        hessian_spectrum(model, nn.functional.mse_loss, (x[:0], y[:0]))
