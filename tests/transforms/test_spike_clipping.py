"""Stable-SPAM's adaptive spike clipping against its rule written out."""

from __future__ import annotations

import torch

from gradkit.core.transform import StepContext
from gradkit.transforms.spike_clipping import AdaptiveSpikeClipping


def test_written_out_rule_over_a_stream():
    torch.manual_seed(0)
    t_ = AdaptiveSpikeClipping()
    theta = 0.9
    params = [torch.zeros(10, 3), torch.zeros(4)]
    state = t_.init(params)
    run_max = [0.0, 0.0]
    for step in range(1, 101):
        grads = [torch.randn(10, 3), torch.randn(4)]
        if step % 10 == 0:
            grads[0][2, 1] = 50.0  # a spike
        ctx = StepContext(group={"theta": theta}, steps=[step, step], grads=grads)
        out = t_.update(grads, state, params, ctx)
        for i, (g, o) in enumerate(zip(grads, out)):
            big = g.abs().max().item()
            run_max[i] = theta * run_max[i] + (1 - theta) * big
            thr = run_max[i] / (1 - theta**step)
            expected = torch.where(g.abs() > thr, g / big * thr, g)
            torch.testing.assert_close(o, expected)
            assert o.abs().max() <= thr * (1 + 1e-6)
            assert torch.equal(torch.sign(o), torch.sign(g))
    assert AdaptiveSpikeClipping.segments == "tensors"  # per-tensor maxima on flat buffers
