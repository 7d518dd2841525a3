"""Noise-adaptive layer-wise learning rates: the rule written out step by step."""

from __future__ import annotations

import pytest
import torch

import gradkit
from gradkit.optim.noise_adaptive import NoiseAdaptiveMuon
from gradkit.transforms.orthogonalize import newton_schulz
from helpers import single_threaded_tests  # noqa: F401  (autouse: one intra-op thread)

SHAPES = [(8, 6), (6, 6), (12, 6)]


def _dual(x, norm):
    if norm == "spectral":
        return torch.linalg.matrix_norm(x.reshape(x.shape[0], -1), ord="nuc")
    return x.norm() if norm == "l2" else x.abs().sum()


def _direction(m, norm):
    if norm == "spectral":
        return newton_schulz(m, 5)
    return m / m.norm() if norm == "l2" else torch.sign(m)


@pytest.mark.parametrize("norm", ["spectral", "l2", "linf"])
def test_trajectory_matches_written_out_rule(norm):
    torch.manual_seed(0)
    init = [torch.randn(s) for s in SHAPES]
    ours = [p.clone().requires_grad_() for p in init]
    ref = [p.clone() for p in init]
    lr, mu, beta2, delta = 0.02, 0.9, 0.95, 1e-12
    opt = NoiseAdaptiveMuon(ours, lr=lr, momentum=mu, beta2=beta2, norm=norm, scale="spectral")
    m = [torch.zeros_like(p) for p in ref]
    h = [0.0] * len(ref)
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    noise = [0.1, 1.0, 3.0]  # layers with different gradient noise
    for _ in range(120):
        for p, s in zip(ours, noise):
            p.grad = 0.3 * p.detach() + s * torch.randn(p.shape, generator=g1)
        opt.step()
        grads = [0.3 * p + s * torch.randn(p.shape, generator=g2) for p, s in zip(ref, noise)]
        for i, g in enumerate(grads):
            h[i] = beta2 * h[i] + (1 - beta2) * _dual(g - m[i], norm).item() ** 2
            m[i] = mu * m[i] + (1 - mu) * g
        hmin = min(h)
        for i, p in enumerate(ref):
            factor = ((hmin + delta) / (h[i] + delta)) ** 0.5
            shape = max(1.0, p.shape[0] / p.shape[1]) ** 0.5
            ref[i] = p - lr * factor * shape * _direction(m[i], norm)
    for a, b in zip(ours, ref):
        assert torch.allclose(a.detach(), b, rtol=1e-4, atol=1e-5), (a - b).abs().max()
    # the noisiest layer ends with the smallest learning-rate factor
    hs = [opt.state[p]["noise"].item() for p in ours]
    assert hs[0] < hs[1] < hs[2]


def test_registry_and_bad_input():
    p = [torch.randn(3, 3, requires_grad=True)]
    assert isinstance(gradkit.create_optimizer(p, "lanton"), NoiseAdaptiveMuon)
    for bad in ({"beta2": 1.0}, {"noise_delta": 0.0}, {"norm": "l1"}, {"lr": -1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            NoiseAdaptiveMuon(p, **bad)
