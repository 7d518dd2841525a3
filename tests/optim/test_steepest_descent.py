"""Steepest descent under a norm: trajectories against the method written out step by step."""

from __future__ import annotations

import pytest
import torch

import gradkit
from gradkit.optim.muon import Muon
from gradkit.optim.steepest_descent import SteepestDescent
from gradkit.transforms.orthogonalize import newton_schulz
from helpers import single_threaded_tests  # noqa: F401  (autouse: one intra-op thread)

SHAPES = [(9, 5), (7,), (3, 2, 2)]


def _grads(params, g):
    return [torch.randn(p.shape, generator=g) + 0.3 * p for p in params]


@pytest.mark.parametrize("norm", ["l2", "linf", "spectral"])
def test_trajectory_matches_written_out_method(norm):
    torch.manual_seed(0)
    init = [torch.randn(s) for s in SHAPES]
    ours = [p.clone().requires_grad_() for p in init]
    ref = [p.clone() for p in init]
    lr, mu, wd = 0.01, 0.9, 0.1
    opt = SteepestDescent(ours, lr=lr, momentum=mu, norm=norm, weight_decay=wd)
    m = [torch.zeros_like(p) for p in ref]
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(120):
        for p, gr in zip(ours, _grads([q.detach() for q in ours], g1)):
            p.grad = gr
        opt.step()
        grads = _grads(ref, g2)
        for i, (p, gr) in enumerate(zip(ref, grads)):
            m[i] = mu * m[i] + (1 - mu) * gr  # EMA momentum, m_0 = 0
            if norm == "l2":  # normalized SGD: m / ||m||_F
                d = m[i] / m[i].norm()
            elif norm == "linf":  # sign descent
                d = torch.sign(m[i])
            else:  # U V^T of the matrix view (vectors: 1 x n), by the quintic iteration
                mat = m[i].reshape(m[i].shape[0], -1) if m[i].ndim > 1 else m[i].reshape(1, -1)
                d = newton_schulz(mat, 5).reshape(p.shape)
            ref[i] = p * (1 - lr * wd) - lr * d
    for a, b in zip(ours, ref):
        assert torch.allclose(a.detach(), b, rtol=1e-5, atol=1e-6), (a - b).abs().max()


def test_spectral_equals_muon_without_shape_scale():
    torch.manual_seed(0)
    init = [torch.randn(8, 4), torch.randn(4, 8)]
    a = [p.clone().requires_grad_() for p in init]
    b = [p.clone().requires_grad_() for p in init]
    oa = SteepestDescent(a, lr=0.02, momentum=0.95, norm="spectral")
    ob = Muon(b, lr=0.02, momentum=0.95, nesterov=False, scale="none")
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        gs = [torch.randn(p.shape, generator=g) for p in a]
        for p, q, gr in zip(a, b, gs):
            p.grad, q.grad = gr, gr.clone()
        oa.step()
        ob.step()
    for x, y in zip(a, b):
        assert torch.allclose(x, y, atol=1e-6)


def test_registry_and_bad_input():
    p = [torch.randn(3, 3, requires_grad=True)]
    assert isinstance(gradkit.create_optimizer(p, "steepest_descent", norm="linf"), SteepestDescent)
    for bad in ({"norm": "l3"}, {"lr": -1.0}, {"momentum": 1.5}, {"ns_steps": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SteepestDescent(p, **bad)
