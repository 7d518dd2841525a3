"""Error-feedback compression: the invariant sum(applied) + residual = sum(raw) over many steps
(exactly on integer-valued updates, to rounding otherwise), the rule written out step by step,
the compressors' definitions, and use under any optimizer through a chain."""

from __future__ import annotations

import math

import pytest
import torch

from gradkit import ChainOptimizer, chain
from gradkit.core.transform import StepContext
from gradkit.transforms import ScaleByAdam, ScaleByLearningRate
from gradkit.transforms.compression import CompressWithErrorFeedback, compress


def _run(transform, grads_per_step, ratio=0.1, eta=1.0):
    params = [torch.zeros_like(g) for g in grads_per_step[0]]
    state = transform.init(params)
    group = {"topk_ratio": ratio, "feedback_strength": eta}
    applied = [torch.zeros_like(p) for p in params]
    for t, grads in enumerate(grads_per_step):
        ctx = StepContext(group=group, steps=[t + 1] * len(params), grads=grads)
        out = transform.update(list(grads), state, params, ctx)
        for a, c in zip(applied, out):
            a.add_(c)
    return applied, state["residual"]


def _int_grads(steps, shapes, seed):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randint(-50, 51, s, generator=g).double() for s in shapes] for _ in range(steps)]


@pytest.mark.parametrize("seed", range(3))
def test_invariant_exact_top_k(seed):
    shapes = [(7, 5), (13,), (2, 3, 4)]
    grads = _int_grads(300, shapes, seed)
    applied, residual = _run(CompressWithErrorFeedback("top_k"), grads, ratio=0.1)
    raw = [sum(g[i] for g in grads) for i in range(len(shapes))]
    for a, e, r in zip(applied, residual, raw):
        assert torch.equal(a + e, r)  # exact: integer values, float64
        assert e.abs().sum() > 0  # the test can fail: something is held back


@pytest.mark.parametrize(("compressor", "eta"), [("sign", 1.0), ("top_k", 0.3), ("sign", 0.5)])
def test_invariant_to_rounding(compressor, eta):
    torch.manual_seed(0)
    shapes = [(9, 4), (11,)]
    grads = [[torch.randn(s, dtype=torch.float64) for s in shapes] for _ in range(500)]
    applied, residual = _run(CompressWithErrorFeedback(compressor), grads, ratio=0.05, eta=eta)
    raw = [sum(g[i] for g in grads) for i in range(len(shapes))]
    for a, e, r in zip(applied, residual, raw):
        # 500 additions of O(1) numbers: rounding error ~ 500 * 1e-16 * |sum| scale
        torch.testing.assert_close(a + e, r, rtol=0, atol=1e-11)
        assert (a - r).abs().max() > 1e-3  # applied alone differs: the residual matters


@pytest.mark.parametrize(("compressor", "eta"), [("top_k", 1.0), ("sign", 1.0), ("top_k", 0.4)])
def test_matches_rule_written_out(compressor, eta):
    torch.manual_seed(1)
    grads = [[torch.randn(6, 5, dtype=torch.float64)] for _ in range(40)]
    tr = CompressWithErrorFeedback(compressor)
    params = [torch.zeros(6, 5, dtype=torch.float64)]
    state = tr.init(params)
    e = torch.zeros(30, dtype=torch.float64)
    for t, (g,) in enumerate(grads):
        ctx = StepContext(
            group={"topk_ratio": 0.1, "feedback_strength": eta}, steps=[t + 1], grads=[g]
        )
        (c,) = tr.update([g], state, params, ctx)
        # the rule, element by element in Python
        p = [float(g.flatten()[i]) + eta * float(e[i]) for i in range(30)]
        if compressor == "top_k":
            keep = sorted(range(30), key=lambda i: -abs(p[i]))[:3]  # ceil(0.1 * 30) = 3
            ref = [p[i] if i in keep else 0.0 for i in range(30)]
        else:
            scale = sum(abs(v) for v in p) / 30
            ref = [math.copysign(scale, v) if v != 0 else 0.0 for v in p]
        e = e + g.flatten() - torch.tensor(ref, dtype=torch.float64)
        torch.testing.assert_close(c.flatten(), torch.tensor(ref, dtype=torch.float64))
        torch.testing.assert_close(state["residual"][0].flatten(), e)


def test_compressors():
    x = torch.tensor([[0.5, -3.0, 1.0], [2.0, -0.1, 0.0]])
    torch.testing.assert_close(
        compress(x, "top_k", 0.3), torch.tensor([[0.0, -3.0, 0.0], [2.0, 0.0, 0.0]])
    )
    torch.testing.assert_close(compress(x, "top_k", 1e-9), torch.tensor([[0, -3.0, 0], [0, 0, 0]]))
    torch.testing.assert_close(compress(x, "sign", 0.3), torch.sign(x) * (6.6 / 6))
    assert compress(torch.zeros(0), "sign").numel() == 0
    with pytest.raises(ValueError, match="compressor"):
        compress(x, "random_k")
    with pytest.raises(ValueError, match="compressor"):
        CompressWithErrorFeedback("qsgd")


def _quadratic(seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(20, 20, generator=g, dtype=torch.float64)
    h = a @ a.T / 20 + 0.5 * torch.eye(20, dtype=torch.float64)
    b = torch.randn(20, generator=g, dtype=torch.float64)
    return h, b


def _train(transform, defaults, steps=400):
    h, b = _quadratic()
    x = torch.zeros(20, dtype=torch.float64, requires_grad=True)
    opt = ChainOptimizer([x], transform, defaults)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * x @ h @ x - b @ x).backward()
        opt.step()
    return x.detach(), torch.linalg.solve(h, b), opt


def test_any_optimizer_on_compressed_updates():
    # ratio 1 keeps everything: the same trajectory as the plain optimizer, bit for bit
    plain, _, _ = _train(chain(ScaleByAdam(), ScaleByLearningRate()), {"lr": 0.05}, steps=50)
    full, _, _ = _train(
        chain(CompressWithErrorFeedback(), ScaleByAdam(), ScaleByLearningRate()),
        {"lr": 0.05, "topk_ratio": 1.0},
        steps=50,
    )
    assert torch.equal(plain, full)
    # SGD on top-5% (1 of 20 coordinates per step) with error feedback still converges
    x, xstar, opt = _train(
        chain(CompressWithErrorFeedback("top_k"), ScaleByLearningRate()),
        {"lr": 0.1, "topk_ratio": 0.05},
        steps=3000,
    )
    assert (x - xstar).norm() < 1e-6 * xstar.norm()
    assert "residual" in opt.state[opt.param_groups[0]["params"][0]]
    # sign compression with error feedback converges too (to a neighbourhood, lr-sized)
    x, xstar, _ = _train(
        chain(CompressWithErrorFeedback("sign"), ScaleByLearningRate()), {"lr": 0.02}, steps=3000
    )
    assert (x - xstar).norm() < 1e-2 * xstar.norm()


def test_state_dict_roundtrip_and_invalid_values():
    tr = chain(CompressWithErrorFeedback("top_k"), ScaleByLearningRate())
    _, _, opt = _train(tr, {"lr": 0.1, "topk_ratio": 0.1}, steps=5)
    sd = opt.state_dict()
    x2 = torch.zeros(20, dtype=torch.float64, requires_grad=True)
    opt2 = ChainOptimizer(
        [x2],
        chain(CompressWithErrorFeedback(), ScaleByLearningRate()),
        {"lr": 0.1, "topk_ratio": 0.1},
    )
    opt2.load_state_dict(sd)
    assert torch.equal(opt2.state[x2]["residual"], next(iter(opt.state.values()))["residual"])
    for bad in ({"topk_ratio": 0.0}, {"topk_ratio": 1.5}, {"feedback_strength": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ChainOptimizer(
                [x2], chain(CompressWithErrorFeedback(), ScaleByLearningRate()), {"lr": 0.1, **bad}
            )
