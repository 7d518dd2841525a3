"""Roughness index (Wu et al., arXiv:2103.11069) on slices whose total variation is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradkit.diagnostics.roughness import (
    normalized_total_variation,
    roughness_index,
    roughness_index_from_slices,
    total_variation,
)


def test_total_variation_of_known_functions():
    a = np.linspace(-1, 1, 601)  # contains every multiple of 1/3
    assert total_variation(3 * a + 1) == pytest.approx(6.0)
    assert normalized_total_variation(3 * a + 1) == pytest.approx(1.0)  # monotone
    assert normalized_total_variation(a**2) == pytest.approx(2.0)  # one well
    # cos(3 pi a) on [-1, 1]: three periods, TV = 12, range = 2
    assert total_variation(np.cos(3 * np.pi * a)) == pytest.approx(12.0)
    assert normalized_total_variation(np.cos(3 * np.pi * a)) == pytest.approx(6.0)
    assert np.isnan(normalized_total_variation(np.ones(5)))


def test_index_from_slices():
    a = np.linspace(-1, 1, 601)
    res = roughness_index_from_slices([a, a**2, np.cos(3 * np.pi * a)], a)
    np.testing.assert_allclose(res.normalized_tv, [1.0, 2.0, 6.0])
    assert res.mean == pytest.approx(3.0)
    assert res.variance == pytest.approx(14 / 3)
    assert res.index == pytest.approx((14 / 3) / 9)
    # invariant to the scale and offset of the loss
    res2 = roughness_index_from_slices([5 * a - 2, 5 * a**2 - 2, 5 * np.cos(3 * np.pi * a) - 2])
    assert res2.index == pytest.approx(res.index)


def test_quadratic_bowl_at_its_minimum_has_zero_roughness():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(40, 1, generator=gen, dtype=torch.float64)
    model = nn.Linear(5, 1).double()
    xa = torch.cat([x, torch.ones(40, 1, dtype=x.dtype)], 1)
    sol = torch.linalg.lstsq(xa, y).solution
    with torch.no_grad():
        model.weight.copy_(sol[:5].T)
        model.bias.copy_(sol[5])
    res = roughness_index(
        model, F.mse_loss, (x, y), num_directions=6, alphas=np.linspace(-1, 1, 11)
    )
    np.testing.assert_allclose(res.normalized_tv, 2.0, rtol=1e-9)
    assert res.index == pytest.approx(0.0, abs=1e-12)
    # away from the minimum slices are lopsided wells or monotone: nu in [1, 2], RI > 0
    with torch.no_grad():
        model.weight.add_(0.3)
    res = roughness_index(
        model, F.mse_loss, (x, y), num_directions=6, alphas=np.linspace(-1, 1, 11)
    )
    assert np.all((res.normalized_tv >= 1 - 1e-9) & (res.normalized_tv <= 2 + 1e-9))
    assert res.index > 0


def test_errors():
    with pytest.raises(ValueError, match="at least 2"):
        total_variation([1.0])
    with pytest.raises(ValueError, match="finite"):
        total_variation([1.0, float("inf")])
    with pytest.raises(ValueError, match=">= 2 directions"):
        roughness_index_from_slices([[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="non-constant"):
        roughness_index_from_slices([[1.0, 1.0, 1.0], [1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="num_directions"):
        roughness_index(
            nn.Linear(2, 1), F.mse_loss, (torch.zeros(2, 2), torch.zeros(2, 1)), num_directions=1
        )
