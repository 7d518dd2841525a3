"""Gradient centralization against its closed form and pytorch-optimizer."""

from __future__ import annotations

import torch
from pytorch_optimizer.optimizer.gradient_centralization import centralize_gradient

from gradkit.core.transform import StepContext
from gradkit.transforms.centralization import GradientCentralization


def _run(grads, conv_only=False):
    ctx = StepContext(group={"gc_conv_only": conv_only}, steps=[1] * len(grads), grads=grads)
    return GradientCentralization().update(grads, {}, [torch.zeros(0)] * len(grads), ctx)


def test_closed_form():
    g = torch.tensor([[1.0, 2.0, 3.0], [4.0, 4.0, 7.0]])
    b = torch.tensor([1.0, 5.0])
    out = _run([g, b])
    torch.testing.assert_close(out[0], torch.tensor([[-1.0, 0.0, 1.0], [-1.0, -1.0, 2.0]]))
    torch.testing.assert_close(out[1], b)  # vectors pass through
    assert out[1] is not b  # fresh, writable list


def test_matches_pytorch_optimizer_and_conv_only():
    torch.manual_seed(0)
    grads = [torch.randn(5, 4), torch.randn(3, 2, 3, 3), torch.randn(6)]
    for conv_only in (False, True):
        out = _run(grads, conv_only)
        for g, o in zip(grads, out):
            ref = g.clone()
            centralize_gradient(ref, gc_conv_only=conv_only)
            torch.testing.assert_close(o, ref)
    assert torch.equal(_run(grads, True)[0], grads[0])  # linear weights untouched
    assert GradientCentralization.segments == "rows"  # unit means on flat buffers
