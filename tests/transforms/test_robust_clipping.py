"""Median tracking against its proximal-point rule written out, and its median claim."""

from __future__ import annotations

import pytest
import torch

from gradkit.core.transform import StepContext
from gradkit.transforms.robust_clipping import MedianTracking


def _step(t_, state, grads, tau, step):
    ctx = StepContext(group={"median_tau": tau}, steps=[step] * len(grads), grads=grads)
    return [o.clone() for o in t_.update(grads, state, [torch.zeros(0)] * len(grads), ctx)]


@pytest.mark.parametrize("norm", ["global", "tensor", "coordinate"])
def test_written_out_rule(norm):
    torch.manual_seed(0)
    t_ = MedianTracking(norm)
    params = [torch.zeros(5, 2), torch.zeros(3)]
    state = t_.init(params)
    m = [torch.zeros(5, 2), torch.zeros(3)]
    tau = 0.3
    for step in range(1, 121):
        grads = [torch.randn(5, 2), torch.randn(3) * 3]
        out = _step(t_, state, grads, tau, step)
        diff = [g - mi for g, mi in zip(grads, m)]
        if norm == "global":
            n = torch.cat([d.flatten() for d in diff]).norm()
            diff = [d * min(1.0, tau / n.item()) for d in diff]
        elif norm == "tensor":
            diff = [d * min(1.0, tau / d.norm().item()) for d in diff]
        else:
            diff = [d.clamp(-tau, tau) for d in diff]
        m = [mi + d for mi, d in zip(m, diff)]
        for o, mi in zip(out, m):
            torch.testing.assert_close(o, mi)
    assert MedianTracking("tensor").flat_ok is False
    assert MedianTracking("global").flat_ok is True


def test_first_step_from_zero_is_clipping():
    g = [torch.tensor([3.0, 4.0])]
    t_ = MedianTracking("global")
    out = _step(t_, t_.init(g), g, 1.0, 1)
    torch.testing.assert_close(out[0], torch.tensor([0.6, 0.8]))


def test_tracks_the_median_not_the_mean():
    # exponential(1) samples: median ln 2 = 0.693, mean 1. A heavy-ball EMA goes to the mean.
    gen = torch.Generator().manual_seed(0)
    samples = torch.empty(20000, 1).exponential_(1.0, generator=gen)
    t_ = MedianTracking("coordinate")
    state = t_.init([torch.zeros(1)])
    ema = torch.zeros(1)
    for step, s in enumerate(samples, start=1):
        out = _step(t_, state, [s], 0.003, step)
        ema = 0.997 * ema + 0.003 * s
    assert abs(out[0].item() - 0.6931) < 0.08
    assert abs(ema.item() - 1.0) < 0.15


def test_bad_norm():
    with pytest.raises(ValueError, match="norm"):
        MedianTracking("l1")
