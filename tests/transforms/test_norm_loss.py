"""Norm loss: one step against its closed form; unit norms move towards 1."""

from __future__ import annotations

import torch

from gradkit.core.transform import StepContext
from gradkit.transforms.norm_loss import NormLoss


def test_closed_form_and_direction():
    w = torch.tensor([[3.0, 4.0], [0.3, 0.4]])  # row norms 5 and 0.5
    b = torch.tensor([0.0, 2.0])  # norm 2
    lr, f = 0.1, 0.5
    ctx = StepContext(
        group={"lr": lr, "norm_loss_factor": f, "eps": 0.0}, steps=[1, 1], grads=[w, b]
    )
    w0, b0 = w.clone(), b.clone()
    NormLoss().update([w, b], {}, [w, b], ctx)
    torch.testing.assert_close(w[0], w0[0] * (1 - lr * 2 * f * (1 - 1 / 5)))
    torch.testing.assert_close(w[1], w0[1] * (1 - lr * 2 * f * (1 - 1 / 0.5)))
    torch.testing.assert_close(b, b0 * (1 - lr * 2 * f * (1 - 1 / 2)))
    norms = w.norm(dim=1)
    assert norms[0] < 5 and norms[1] > 0.5
    assert NormLoss.segments == "rows"  # unit norms on flat buffers
