"""Adaptive gradient clipping against its closed form and pytorch-optimizer's agc."""

from __future__ import annotations

import pytest
import torch
from pytorch_optimizer.optimizer.agc import agc as po_agc

from gradkit.core.transform import StepContext
from gradkit.transforms.agc import AdaptiveGradientClipping


def _run(params, grads, clip=0.01, eps=1e-3):
    ctx = StepContext(
        group={"agc_clipping_value": clip, "agc_eps": eps}, steps=[1] * len(params), grads=grads
    )
    return AdaptiveGradientClipping().update(grads, {}, params, ctx)


def test_closed_form_per_unit():
    w = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])  # row norms 5, 0 (-> eps), 1
    g = torch.tensor([[0.3, 0.4], [1.0, 0.0], [0.001, 0.0]])  # row norms .5, 1, .001
    (out,) = _run([w], [g], clip=0.05, eps=1e-2)
    # row 0: max 0.25 < 0.5 -> scaled to norm 0.25; row 1: max 5e-4 -> scaled; row 2: kept
    torch.testing.assert_close(out[0], g[0] * 0.5)
    torch.testing.assert_close(out[1], torch.tensor([5e-4, 0.0]))
    torch.testing.assert_close(out[2], g[2])


def test_conv_filters_use_all_fan_in_dims():
    torch.manual_seed(0)
    w, g = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    (out,) = _run([w], [g], clip=0.1)
    for i in range(4):
        max_norm = max(w[i].norm().item(), 1e-3) * 0.1
        expected = g[i] * min(1.0, max_norm / g[i].norm().item())
        torch.testing.assert_close(out[i], expected)


@pytest.mark.parametrize("shape", [(7, 5), (5,), (4, 3, 2, 2)])
def test_matches_pytorch_optimizer(shape):
    torch.manual_seed(1)
    w, g = torch.randn(shape), torch.randn(shape)
    (out,) = _run([w], [g])
    torch.testing.assert_close(out, po_agc(w, g, 1e-3, 1e-2))


def test_none_disables_and_reduces_per_row():
    g = torch.ones(3, 3)
    assert _run([torch.zeros(3, 3)], [g], clip=None)[0] is g
    assert AdaptiveGradientClipping.segments == "rows"  # unit norms on flat buffers
