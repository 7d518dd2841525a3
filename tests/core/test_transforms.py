"""Foundation transforms against closed forms and torch's own utilities."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gradkit import ChainOptimizer, GradientTransformation, chain
from gradkit.transforms import (
    ClipByGlobalNorm,
    Momentum,
    NonFiniteGradientError,
    RejectNonFinite,
    ScaleByAdam,
    ScaleByLearningRate,
    Sign,
)
from helpers import make_mlp, regression_batches, train


def _grads(model, x, y):
    model.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()


@pytest.mark.parametrize("max_norm", [1e-3, 0.1, 100.0])
def test_clip_by_global_norm_matches_torch(max_norm):
    model = make_mlp()
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    opt = ChainOptimizer(
        a.parameters(),
        chain(ClipByGlobalNorm(), ScaleByLearningRate()),
        {"lr": 0.1, "max_norm": max_norm},
    )
    x, y = regression_batches(1)[0]
    _grads(a, x, y)
    opt.step()
    _grads(b, x, y)
    torch.nn.utils.clip_grad_norm_(b.parameters(), max_norm)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(p.grad, alpha=-0.1)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_sign_descent_moves_every_coordinate_by_lr():
    model = make_mlp()
    before = [p.detach().clone() for p in model.parameters()]
    opt = ChainOptimizer(model.parameters(), chain(Sign(), ScaleByLearningRate()), {"lr": 0.01})
    x, y = regression_batches(1)[0]
    _grads(model, x, y)
    opt.step()
    for p, p0 in zip(model.parameters(), before):
        expected = p0 - 0.01 * torch.sign(p.grad)
        torch.testing.assert_close(p.detach(), expected)


def _poison(model):
    with torch.no_grad():
        next(model.parameters()).grad[0, 0] = float("nan")


def test_nonfinite_raise():
    model = make_mlp()
    opt = ChainOptimizer(model.parameters(), chain(RejectNonFinite(), ScaleByLearningRate()))
    x, y = regression_batches(1)[0]
    _grads(model, x, y)
    _poison(model)
    with pytest.raises(NonFiniteGradientError, match="nonfinite='skip'"):
        opt.step()


def test_nonfinite_skip_leaves_params_and_state_untouched():
    model = make_mlp()
    opt = ChainOptimizer(
        model.parameters(),
        chain(RejectNonFinite("skip"), ScaleByAdam(), ScaleByLearningRate()),
        {"lr": 1e-2},
    )
    train(model, opt, regression_batches(3))
    params = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict())
    x, y = regression_batches(1)[0]
    _grads(model, x, y)
    _poison(model)
    opt.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    after = opt.state_dict()["state"]
    for pid, st in state["state"].items():
        for key, value in st.items():
            assert torch.equal(after[pid][key], value), key
    train(model, opt, regression_batches(1))  # finite gradients step again
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), params))


def test_nonfinite_mode_is_validated():
    with pytest.raises(ValueError, match="Invalid policy: 'warn'"):
        RejectNonFinite("warn")
    with pytest.raises(ValueError, match="Invalid nonfinite: 'warn'"):
        ChainOptimizer(make_mlp().parameters(), ScaleByLearningRate(), nonfinite="warn")


def test_transform_key_is_keyword_only():
    """``DecoupledWeightDecay(0.1)`` is the default 0.1 of ``weight_decay``, never a key."""
    from gradkit.transforms import DecoupledWeightDecay

    t = DecoupledWeightDecay(0.1)
    assert t.specs()["weight_decay"].default == 0.1
    with pytest.raises(TypeError):
        DecoupledWeightDecay(0.1, "wd")


def test_heavy_ball_closed_form():
    """b_1 = g_1; b_2 = mu b_1 + g_2: two steps on f(w) = 0.5 w^2 by hand."""
    w = nn.Parameter(torch.tensor([1.0]))
    opt = ChainOptimizer(
        [w], chain(Momentum(), ScaleByLearningRate()), {"lr": 0.1, "momentum": 0.9}
    )
    for _ in range(2):
        opt.zero_grad()
        (0.5 * w**2).sum().backward()
        opt.step()
    # w1 = 1 - 0.1*1 = 0.9; b2 = 0.9*1 + 0.9 = 1.8; w2 = 0.9 - 0.18 = 0.72
    torch.testing.assert_close(w.detach(), torch.tensor([0.72]))


def test_chain_flattens_and_reports_closure_need():
    class NeedsClosure(GradientTransformation):
        needs_closure = True

        def update(self, updates, state, params, ctx):
            return updates

    c = chain(chain(Sign()), NeedsClosure(), ScaleByLearningRate())
    assert len(c.transforms) == 3 and c.needs_closure and not chain(Sign()).needs_closure
    opt = ChainOptimizer(make_mlp().parameters(), c)
    with pytest.raises(RuntimeError, match="needs a closure"):
        opt.step()
    with pytest.raises(TypeError):
        chain(Sign(), "adam")


def test_writable_copies_unowned_lists():
    class Doubler(GradientTransformation):
        def update(self, updates, state, params, ctx):
            out = ctx.writable(updates)
            torch._foreach_mul_(out, 2.0)
            return out

    model = make_mlp()
    opt = ChainOptimizer(model.parameters(), chain(Doubler(), ScaleByLearningRate()), {"lr": 0.1})
    x, y = regression_batches(1)[0]
    _grads(model, x, y)
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))
