"""Muon: trajectories against pytorch-optimizer, the role split, state dicts, bad input."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import gradkit
from gradkit.optim.muon import Muon
from helpers import single_threaded_tests  # noqa: F401  (autouse: one intra-op thread)

SHAPES = [(16, 8), (8, 16), (16, 8), (6, 2, 3, 3), (12,), (5,)]


def _po_muon_fp32(monkeypatch):
    """pytorch-optimizer's Muon with its Newton-Schulz in float32 (it hard-codes bfloat16)."""
    po = pytest.importorskip("pytorch_optimizer")
    import pytorch_optimizer.optimizer.muon.base as base
    from pytorch_optimizer.optimizer.utils.matrix import zero_power_via_newton_schulz_5

    monkeypatch.setattr(
        base,
        "zero_power_via_newton_schulz_5",
        functools.partial(zero_power_via_newton_schulz_5, dtype=torch.float32),
    )
    return po.Muon


def _run(opt, params, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            # a gradient that depends on the parameters, so trajectories feed back
            p.grad = torch.randn(p.shape, generator=g) + 0.5 * p.detach()
        opt.step()


@pytest.mark.parametrize(
    "nesterov,scale,fused",
    [(True, "spectral", True), (False, "rms", True), (True, "spectral", False)],
)
def test_trajectory_matches_pytorch_optimizer(monkeypatch, nesterov, scale, fused):
    PoMuon = _po_muon_fp32(monkeypatch)
    torch.manual_seed(0)
    init = [torch.randn(s) for s in SHAPES]
    ours = [p.clone().requires_grad_() for p in init]
    ref = [p.clone().requires_grad_() for p in init]
    hp = dict(lr=0.02, momentum=0.9, nesterov=nesterov, weight_decay=0.05)
    adam = dict(adamw_lr=1e-2, adamw_betas=(0.9, 0.99), adamw_eps=1e-8, adamw_wd=0.01)
    opt = Muon(ours, scale=scale, fused=fused, **hp, **adam)
    po = PoMuon(
        [
            {"params": [p for p in ref if p.ndim >= 2], "use_muon": True},
            {"params": [p for p in ref if p.ndim < 2], "use_muon": False},
        ],
        use_adjusted_lr=scale == "rms",
        **hp,
        **adam,
    )
    _run(opt, ours, 150)
    _run(po, ref, 150)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), (a - b).abs().max()


def test_fused_equals_chain():
    torch.manual_seed(0)
    init = [torch.randn(s) for s in SHAPES]
    a = [p.clone().requires_grad_() for p in init]
    b = [p.clone().requires_grad_() for p in init]
    oa, ob = Muon(a, fused=True, weight_decay=0.1), Muon(b, fused=False, weight_decay=0.1)
    _run(oa, a, 100)
    _run(ob, b, 100)
    for x, y in zip(a, b):
        assert torch.allclose(x, y, rtol=1e-6, atol=1e-6)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.hidden = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 20)

    def forward(self, x):
        h = self.embed(x).transpose(1, 2)
        h = self.conv(h).transpose(1, 2)
        return self.head(self.norm(torch.tanh(self.hidden(h))))


def test_from_module_split_and_override():
    net = _Net()
    opt = gradkit.create_optimizer(net, "muon", lr=0.01, adamw_lr=1e-3)
    muon_ids = {id(p) for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    assert muon_ids == {id(net.conv.weight), id(net.hidden.weight)}
    for g in opt.param_groups:
        assert g["lr"] == (0.01 if g["use_muon"] else 1e-3)
    # the user moves the head to Muon
    opt2 = Muon.from_module(net, overrides={"head.weight": "hidden_matrix"})
    muon2 = {id(p) for g in opt2.param_groups if g["use_muon"] for p in g["params"]}
    assert id(net.head.weight) in muon2
    x = torch.randint(0, 20, (4, 6))
    before = [p.detach().clone() for p in net.parameters()]
    for _ in range(3):
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, net.parameters()))


def test_plain_params_split_by_ndim():
    ps = [torch.randn(s, requires_grad=True) for s in SHAPES]
    opt = Muon(ps)
    for g in opt.param_groups:
        assert all((p.ndim >= 2) == g["use_muon"] for p in g["params"])


def test_state_dict_round_trip():
    torch.manual_seed(0)
    init = [torch.randn(s) for s in SHAPES]
    a = [p.clone().requires_grad_() for p in init]
    opt = Muon(a)
    _run(opt, a, 5)
    saved = opt.state_dict()
    b = [p.detach().clone().requires_grad_() for p in a]
    opt_b = Muon(b)
    opt_b.load_state_dict(saved)
    _run(opt, a, 5, seed=7)
    _run(opt_b, b, 5, seed=7)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.parametrize(
    "bad",
    [
        {"lr": -1.0},
        {"momentum": 1.0},
        {"ns_steps": 0},
        {"ns_steps": 2.5},
        {"scale": "bogus"},
        {"adamw_betas": (1.0, 0.9)},
        {"adamw_lr": -3.0},
        {"ns_dtype": "bf16"},
        {"fused": "yes"},
    ],
)
def test_bad_hyperparameters(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        Muon([torch.randn(4, 4, requires_grad=True), torch.randn(4, requires_grad=True)], **bad)
