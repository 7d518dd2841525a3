"""The torch.optim contract: groups, state dicts, schedulers, closures, dtypes, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import gradkit
from gradkit.optim import SGD, Adam, AdamW
from helpers import make_mlp, max_rel_diff, regression_batches, train


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("sgd", dict(lr=1e-2, momentum=0.9, nesterov=True)),
        ("adam", dict(lr=1e-2, amsgrad=True)),
        ("adamw", dict(lr=1e-2, weight_decay=0.1)),
    ],
)
def test_state_dict_resume_is_bit_exact(name, kwargs, tmp_path):
    batches = regression_batches(100)
    ref = make_mlp()
    opt = gradkit.create_optimizer(ref, name, **kwargs)
    train(ref, opt, batches)

    first = make_mlp()
    opt1 = gradkit.create_optimizer(first, name, **kwargs)
    train(first, opt1, batches[:50])
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict()}, tmp_path / "ckpt.pt")

    ckpt = torch.load(tmp_path / "ckpt.pt")
    resumed = make_mlp(seed=123)  # different init: everything must come from the checkpoint
    resumed.load_state_dict(ckpt["model"])
    opt2 = gradkit.create_optimizer(resumed, name, **kwargs)
    opt2.load_state_dict(ckpt["opt"])
    train(resumed, opt2, batches[50:])
    for p, q in zip(ref.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_state_dict_keeps_state_dtypes():
    model = make_mlp().to(torch.bfloat16)
    opt = AdamW(model.parameters(), lr=1e-2)
    train(model, opt, regression_batches(3, dtype=torch.bfloat16))
    sd = copy.deepcopy(opt.state_dict())
    opt2 = AdamW(model.parameters(), lr=1e-2)
    opt2.load_state_dict(sd)
    for p in model.parameters():
        for key, value in opt.state[p].items():
            assert opt2.state[p][key].dtype == value.dtype
            assert torch.equal(opt2.state[p][key], value)


def test_param_groups_match_torch():
    model = make_mlp()
    a, b = copy.deepcopy(model), copy.deepcopy(model)

    def groups(m):
        return [
            {"params": [m[0].weight, m[0].bias], "lr": 1e-2, "weight_decay": 0.0},
            {"params": [m[2].weight, m[2].bias], "lr": 3e-3, "betas": (0.8, 0.95)},
        ]

    batches = regression_batches(100)
    train(a, AdamW(groups(a), lr=1e-3, weight_decay=0.1), batches)
    train(b, torch.optim.AdamW(groups(b), lr=1e-3, weight_decay=0.1), batches)
    assert max_rel_diff(a, b) < 1e-6


def test_add_param_group_and_validation():
    model = make_mlp()
    opt = SGD([model[0].weight], lr=0.1)
    opt.add_param_group({"params": [model[2].weight], "momentum": 0.5})
    assert opt.param_groups[1]["lr"] == 0.1 and opt.param_groups[1]["momentum"] == 0.5
    with pytest.raises(ValueError, match="momentum"):
        opt.add_param_group({"params": [model[2].bias], "momentum": 1.5})
    assert len(opt.param_groups) == 2


@pytest.mark.parametrize(
    "make_sched",
    [
        lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=10, gamma=0.5),
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=1e-2, total_steps=60),
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=60),
    ],
)
def test_lr_schedulers_match_torch(make_sched):
    model = make_mlp()
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    oa, ob = AdamW(a.parameters(), lr=1e-2), torch.optim.AdamW(b.parameters(), lr=1e-2)
    sa, sb = make_sched(oa), make_sched(ob)
    batches = regression_batches(60)
    train(a, oa, batches, sa)
    train(b, ob, batches, sb)
    assert oa.param_groups[0]["lr"] == pytest.approx(ob.param_groups[0]["lr"])
    assert max_rel_diff(a, b) < 1e-6


def test_closure_returns_loss_and_matches_plain_step():
    model = make_mlp()
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    batches = regression_batches(30)
    la = train(a, Adam(a.parameters(), lr=1e-2), batches, use_closure=True)
    lb = train(b, Adam(b.parameters(), lr=1e-2), batches)
    assert la == lb
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_params_without_grad_are_skipped():
    model = make_mlp()
    frozen = model[0].weight.detach().clone()
    model[0].weight.requires_grad_(False)
    opt = AdamW(model.parameters(), lr=1e-2)
    train(model, opt, regression_batches(5))
    assert torch.equal(model[0].weight, frozen)
    assert len(opt.state[model[0].weight]) == 0
    assert opt.state[model[2].weight]["step"].item() == 5


def test_bf16_params_follow_torch():
    model = make_mlp().to(torch.bfloat16)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    batches = regression_batches(50, dtype=torch.bfloat16)
    train(a, AdamW(a.parameters(), lr=1e-3), batches)
    train(b, torch.optim.AdamW(b.parameters(), lr=1e-3, foreach=False), batches)
    for p, q in zip(a.parameters(), b.parameters()):
        assert p.dtype == torch.bfloat16
        # bf16 has 8 mantissa bits: a few ulps of drift over 50 steps
        assert ((p.float() - q.float()).norm() / q.float().norm()).item() < 2e-2


def test_sparse_gradients_are_refused():
    emb = nn.Embedding(10, 4, sparse=True)
    opt = Adam(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()


def test_zero_grad_sets_to_none():
    model = make_mlp()
    opt = SGD(model.parameters(), lr=0.1)
    train(model, opt, regression_batches(1))
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_infinite_hyperparameter_is_refused():
    """inf is not among the generated invalid values (tests/optim/test_contract_all.py): a
    half-open range such as weight_decay >= 0 still refuses it."""
    with pytest.raises(ValueError, match=r"Invalid weight_decay: inf; weight_decay must be"):
        gradkit.create_optimizer(make_mlp(), "adamw", weight_decay=float("inf"))


def test_bad_hyperparameter_message_names_the_range():
    with pytest.raises(ValueError) as info:
        Adam(make_mlp().parameters(), betas=(0.9, 1.5))
    assert "[0, 1)" in str(info.value)


def test_nesterov_needs_momentum():
    with pytest.raises(ValueError, match="Nesterov"):
        SGD(make_mlp().parameters(), lr=0.1, nesterov=True)


def test_unknown_hyperparameter_is_a_type_error():
    with pytest.raises(TypeError, match="unknown hyperparameter"):
        AdamW(make_mlp().parameters(), lr=1e-3, momentum=0.9)


def test_momentum_zero_keeps_no_buffer():
    model = make_mlp()
    opt = SGD(model.parameters(), lr=0.1)
    train(model, opt, regression_batches(3))
    buffers = [st["momentum_buffer"] for st in opt.state.values()]
    assert len(buffers) == 4 and all(b.numel() == 0 for b in buffers)
    opt.param_groups[0]["momentum"] = 0.9  # turned on later: allocated on first use
    train(model, opt, regression_batches(1))
    assert all(b.shape == p.shape for b, p in zip(buffers, model.parameters()))


def test_step_does_not_modify_gradients():
    model = make_mlp()
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    x, y = regression_batches(1)[0]
    for _ in range(3):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        before = [p.grad.clone() for p in model.parameters()]
        opt.step()
        assert all(torch.equal(g, p.grad) for g, p in zip(before, model.parameters()))
