"""Drop-Muon: only the sampled layers change; the rest of the rule is Muon's."""

from __future__ import annotations

import pytest
import torch

import gradkit
from gradkit.optim.drop_muon import DropMuon
from gradkit.optim.muon import Muon
from helpers import single_threaded_tests  # noqa: F401  (autouse: one intra-op thread)

SHAPES = [(8, 6), (6, 6), (6, 10), (10, 4), (4,)]


def _params():
    torch.manual_seed(0)
    return [torch.randn(s, requires_grad=True) for s in SHAPES]


@pytest.mark.parametrize("schedule", ["progressive", "uniform"])
def test_only_sampled_layers_change(schedule):
    ps = _params()
    opt = DropMuon(ps, schedule=schedule, keep_prob=0.5, seed=0)
    g = torch.Generator().manual_seed(1)
    seen = set()
    for _ in range(30):
        before = [p.detach().clone() for p in ps]
        bufs = [opt.state[p].get("momentum_buffer") for p in ps[:4]]
        bufs = [None if b is None else b.clone() for b in bufs]
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
        sampled = set(opt.last_sampled)
        assert sampled
        if schedule == "progressive":  # a suffix {s, ..., b-1}
            assert sampled == set(range(min(sampled), 4))
        seen |= sampled
        for i in range(4):
            changed = not torch.equal(before[i], ps[i])
            assert changed == (i in sampled)
            if i not in sampled and bufs[i] is not None:  # momentum frozen too
                assert torch.equal(bufs[i], opt.state[ps[i]]["momentum_buffer"])
        assert not torch.equal(before[4], ps[4])  # AdamW parameters: every step
    assert seen == {0, 1, 2, 3}


def test_equals_muon_on_the_sampled_layers():
    # Reference: Muon stepping with the unsampled matrices' gradients removed (torch optimizers
    # skip parameters whose grad is None: no state change, no step).
    ps = _params()
    qs = [p.detach().clone().requires_grad_() for p in ps]
    drop = DropMuon(ps, schedule="uniform", keep_prob=0.5, seed=3, weight_decay=0.1)
    ref = Muon(qs, weight_decay=0.1)
    g = torch.Generator().manual_seed(2)
    for _ in range(60):
        gs = [torch.randn(p.shape, generator=g) for p in ps]
        for p, gr in zip(ps, gs):
            p.grad = gr
        drop.step()
        for i, (q, gr) in enumerate(zip(qs, gs)):
            q.grad = gr.clone() if (i >= 4 or i in drop.last_sampled) else None
        ref.step()
    for p, q in zip(ps, qs):
        assert torch.allclose(p, q, atol=1e-6)


def test_seeded_draws_and_state_dict_round_trip():
    a, b = _params(), _params()
    oa = DropMuon(a, schedule="uniform", seed=11)
    ob = DropMuon(b, schedule="uniform", seed=99)
    for _ in range(4):
        for p in a:
            p.grad = torch.ones_like(p)
        oa.step()
    ob.load_state_dict(oa.state_dict())  # includes the sampler's generator
    for p, q in zip(a, b):
        q.data.copy_(p.data)
    for _ in range(5):
        for p, q in zip(a, b):
            p.grad, q.grad = torch.ones_like(p), torch.ones_like(q)
        oa.step()
        ob.step()
        assert oa.last_sampled == ob.last_sampled
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_registry_and_bad_input():
    ps = _params()
    assert isinstance(gradkit.create_optimizer(ps, "drop_muon"), DropMuon)
    for bad in ({"schedule": "random"}, {"keep_prob": 0.0}, {"keep_prob": 1.5}, {"seed": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            DropMuon(ps, **bad)


def test_nonfinite_policy_sees_unsampled_matrices():
    ps = _params()
    opt = DropMuon(ps, schedule="progressive", seed=0, nonfinite="raise")
    for p in ps:
        p.grad = torch.randn_like(p)
    ps[0].grad[0, 0] = float("nan")  # the input-side matrix: rarely sampled
    with pytest.raises(FloatingPointError, match="non-finite"):
        opt.step()
    skip = DropMuon(ps, schedule="uniform", keep_prob=1.0, seed=0, nonfinite="skip")
    before = [p.detach().clone() for p in ps[:4]]
    skip.step()
    assert all(torch.equal(b, p) for b, p in zip(before, ps[:4]))  # the Muon group skipped
    assert "options" not in skip.param_groups[0] and "seed" not in skip.param_groups[0]
