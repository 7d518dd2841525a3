"""Linear interpolation between models and the barrier height, against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradkit.diagnostics.connectivity import (
    barrier_height,
    interpolate_state_dict,
    layer_groups,
    layerwise_interpolation,
    linear_interpolation,
    renormalize,
)


class _DoubleWell(nn.Module):
    """Output w**2 for any input: with target 1 the loss (w^2 - 1)^2 has minima w = -1, +1."""

    def __init__(self, w: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([w], dtype=torch.float64))

    def forward(self, x):
        return (self.w**2).expand(x.shape[0])


def test_double_well_barrier_is_one_at_midpoint():
    data = (torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64))
    res = linear_interpolation(_DoubleWell(-1.0), _DoubleWell(1.0), F.mse_loss, data)
    t = np.linspace(0, 1, 11)
    np.testing.assert_allclose(res.losses, ((2 * t - 1) ** 2 - 1) ** 2, atol=1e-12)
    assert res.barrier == pytest.approx(1.0)
    assert res.barrier_alpha == pytest.approx(0.5)


def _linear(seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(5, 2).double()


def test_linear_regression_matches_closed_form_and_has_no_barrier():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(50, 2, generator=gen, dtype=torch.float64)
    a, b = _linear(1), _linear(2)
    alphas = np.linspace(0, 1, 21)
    res = linear_interpolation(a, b, F.mse_loss, (x, y), alphas)
    with torch.no_grad():
        ra, rb = a(x) - y, b(x) - y
    expected = [float(((ra + t * (rb - ra)) ** 2).mean()) for t in alphas]
    np.testing.assert_allclose(res.losses, expected, rtol=1e-12)
    # a convex loss lies below the chord: the barrier is reached at an end point and is 0
    assert res.barrier == pytest.approx(0.0, abs=1e-12)
    # the models themselves are untouched
    torch.testing.assert_close(a(x) - y, ra)


def test_layerwise_interpolation_of_a_deep_linear_net():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 1, bias=False)).double()
    b = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 1, bias=False)).double()
    x = torch.randn(20, 3, dtype=torch.float64)
    y = torch.randn(20, 1, dtype=torch.float64)
    assert layer_groups(a) == {"0": ["0.weight"], "1": ["1.weight"]}
    alphas = np.linspace(0, 1, 5)
    res = layerwise_interpolation(a, b, F.mse_loss, (x, y), alphas)
    w1a, w1b, w2a = a[0].weight.detach(), b[0].weight.detach(), a[1].weight.detach()
    for i, t in enumerate(alphas):
        w1 = (1 - t) * w1a + t * w1b
        expected = float(((x @ w1.T @ w2a.T - y) ** 2).mean())
        assert res["0"].losses[i] == pytest.approx(expected, rel=1e-12)
    # end point of layer "1" = model A with B's last layer
    mixed = float(((x @ w1a.T @ b[1].weight.detach().T - y) ** 2).mean())
    assert res["1"].losses[-1] == pytest.approx(mixed, rel=1e-12)


def test_interpolate_state_dict_keeps_integer_buffers():
    a, b = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    b.num_batches_tracked += 7
    b.running_mean += 2.0
    sd = interpolate_state_dict(a.state_dict(), b.state_dict(), 0.25)
    assert int(sd["num_batches_tracked"]) == 0
    torch.testing.assert_close(sd["running_mean"], torch.full((3,), 0.5))


def test_renormalize_sets_batch_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).eval()
    x = torch.randn(64, 3)
    renormalize(model, (x, torch.zeros(64)))
    assert not model.training
    with torch.no_grad():
        h = model[0](x)
    torch.testing.assert_close(model[1].running_mean, h.mean(0))
    torch.testing.assert_close(model[1].running_var, h.var(0, unbiased=True))


def test_errors():
    with pytest.raises(ValueError, match="shape"):
        linear_interpolation(nn.Linear(3, 2), nn.Linear(4, 2), F.mse_loss, (torch.zeros(1, 3),) * 2)
    with pytest.raises(ValueError, match="unknown"):
        linear_interpolation(
            nn.Linear(3, 2),
            nn.Linear(3, 2),
            F.mse_loss,
            (torch.zeros(2, 3), torch.zeros(2, 2)),
            keys=["nope"],
        )
    with pytest.raises(ValueError, match="start at 0"):
        barrier_height([0.1, 1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="scalar"):
        linear_interpolation(
            nn.Linear(3, 2),
            nn.Linear(3, 2),
            lambda o, t: F.mse_loss(o, t, reduction="none"),
            (torch.zeros(2, 3), torch.zeros(2, 2)),
        )
