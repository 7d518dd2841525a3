"""AdaGO: trajectories against the paper's algorithm written out (arXiv 2509.02981)."""

from __future__ import annotations

import pytest
import torch

import gradkit
from gradkit.optim.adago import AdaGO
from gradkit.transforms.orthogonalize import newton_schulz
from helpers import single_threaded_tests  # noqa: F401  (autouse: one intra-op thread)

SHAPES = [(12, 6), (6, 10), (4, 2, 3)]


@pytest.mark.parametrize("gamma", [10.0, 0.5])
def test_trajectory_matches_paper(gamma):
    torch.manual_seed(0)
    init = [torch.randn(s) for s in SHAPES]
    ours = [p.clone().requires_grad_() for p in init]
    ref = [p.clone() for p in init]
    lr, mu, eps, v0, wd = 0.05, 0.9, 1e-3, 1e-6, 0.01
    opt = AdaGO(ours, lr=lr, momentum=mu, gamma=gamma, eps=eps, v=v0, weight_decay=wd)
    m = [torch.zeros_like(p) for p in ref]
    vsq = [v0] * len(ref)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(150):
        for p in ours:
            p.grad = torch.randn(p.shape, generator=g1) + 0.5 * p.detach()
        opt.step()
        for i, p in enumerate(ref):
            g = torch.randn(p.shape, generator=g2) + 0.5 * p
            m[i] = mu * m[i] + (1 - mu) * g
            gn = g.norm().item()
            vsq[i] = vsq[i] + min(gn**2, gamma**2)
            alpha = max(eps, lr * min(gn, gamma) / vsq[i] ** 0.5)
            o = newton_schulz(m[i].reshape(m[i].shape[0], -1), 5).reshape(p.shape)
            ref[i] = p * (1 - lr * wd) - alpha * o
    for a, b in zip(ours, ref):
        assert torch.allclose(a.detach(), b, rtol=1e-5, atol=1e-6), (a - b).abs().max()


def test_vectors_take_adamw_and_state_round_trip():
    ps = [torch.randn(6, 4, requires_grad=True), torch.randn(4, requires_grad=True)]
    opt = AdaGO(ps)
    assert [g["use_muon"] for g in opt.param_groups] == [True, False]
    assert opt.param_groups[1]["eps"] == 1e-10  # AdamW's eps, not the step-size floor
    for _ in range(3):
        for p in ps:
            p.grad = torch.randn_like(p)
        opt.step()
    qs = [p.detach().clone().requires_grad_() for p in ps]
    opt2 = AdaGO(qs)
    opt2.load_state_dict(opt.state_dict())
    for _ in range(3):
        gs = [torch.randn_like(p) for p in ps]
        for p, q, g in zip(ps, qs, gs):
            p.grad, q.grad = g, g.clone()
        opt.step()
        opt2.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, qs))


def test_registry_and_bad_input():
    p = [torch.randn(3, 3, requires_grad=True)]
    assert isinstance(gradkit.create_optimizer(p, "adago"), AdaGO)
    for bad in ({"gamma": 0.0}, {"eps": 0.0}, {"v": -1.0}, {"lr": -1.0}, {"momentum": 1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            AdaGO(p, **bad)
