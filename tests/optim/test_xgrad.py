"""XGrad against the paper's weight-prediction algorithm written out (float64)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from gradkit.optim.xgrad import XGrad
from helpers import (
    grad_at,
    make_mlp,
    max_rel_diff,
    regression_batches,
    single_threaded_tests,  # noqa: F401  (autouse: one intra-op thread)
    train,
)
from optimizer_checks import resume_is_bit_exact


def _reference(model, batches, kind, s, lr, wd=0.0, momentum=0.9, betas=(0.9, 0.999), eps=1e-8):
    """Each step: predict w_hat = w - s*lr*delta from the optimizer state, take the gradient there,
    then update w (not w_hat) with the optimizer's own rule."""
    w = [p.detach().clone() for p in model.parameters()]
    b1, b2 = betas
    buf = m = v = None
    t = 0
    for x, y in batches:
        if kind == "sgd":
            delta = buf
        elif t == 0:
            delta = None
        else:
            delta = [(mi / (1 - b1**t)) / ((vi / (1 - b2**t)).sqrt() + eps) for mi, vi in zip(m, v)]
            if kind == "adamw":
                delta = [d + wd * wi for d, wi in zip(delta, w)]
        w_hat = w if delta is None else [wi - s * lr * d for wi, d in zip(w, delta)]
        g = grad_at(model, w_hat, x, y)
        t += 1
        if kind == "sgd":
            d = [gi + wd * wi for gi, wi in zip(g, w)]
            buf = d if buf is None else [momentum * bi + di for bi, di in zip(buf, d)]
            w = [wi - lr * bi for wi, bi in zip(w, buf)]
            continue
        if kind == "adam":
            g = [gi + wd * wi for gi, wi in zip(g, w)]
        if m is None:
            m = [torch.zeros_like(gi) for gi in g]
            v = [torch.zeros_like(gi) for gi in g]
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
        v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g)]
        if kind == "adamw":
            w = [wi * (1 - lr * wd) for wi in w]
        denom = [vi.sqrt() / math.sqrt(1 - b2**t) + eps for vi in v]
        w = [wi - lr / (1 - b1**t) * mi / di for wi, mi, di in zip(w, m, denom)]
    with torch.no_grad():
        for p, wi in zip(model.parameters(), w):
            p.copy_(wi)


@pytest.mark.parametrize(
    ("base", "kind", "kw"),
    [
        ("sgd", "sgd", dict(lr=0.05, momentum=0.9, weight_decay=1e-3)),
        (torch.optim.SGD, "sgd", dict(lr=0.05, momentum=0.9)),
        ("adam", "adam", dict(lr=1e-2, weight_decay=1e-3)),
        (torch.optim.Adam, "adam", dict(lr=1e-2)),
        ("adamw", "adamw", dict(lr=1e-2, weight_decay=0.1)),
        (torch.optim.AdamW, "adamw", dict(lr=1e-2, weight_decay=0.1)),
    ],
)
@pytest.mark.parametrize("s", [1.0, 2.0])
def test_trajectory_matches_algorithm_float64(base, kind, kw, s):
    model = make_mlp(dtype=torch.float64)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    batches = regression_batches(120, dtype=torch.float64)
    train(a, XGrad(a.parameters(), base, prediction_steps=s, **kw), batches, use_closure=True)
    _reference(b, batches, kind, s, kw["lr"], kw.get("weight_decay", 0.0), kw.get("momentum", 0.9))
    assert max_rel_diff(a, b) < 1e-10


def test_prediction_zero_is_the_base_optimizer():
    model = make_mlp()
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    batches = regression_batches(100)
    opt = XGrad(a.parameters(), "adamw", prediction_steps=0.0, lr=1e-2)
    train(a, opt, batches, use_closure=True)
    train(b, torch.optim.AdamW(b.parameters(), lr=1e-2), batches, use_closure=True)
    assert max_rel_diff(a, b) < 1e-6


def test_state_dict_resume_is_exact(tmp_path):
    assert resume_is_bit_exact(
        lambda p: XGrad(p, "adam", lr=1e-2), tmp_path, steps=30, use_closure=True
    )


def test_missing_closure_is_a_clear_error():
    opt = XGrad(make_mlp().parameters())
    with pytest.raises(RuntimeError, match="XGrad needs a closure.*predicted future weights"):
        opt.step()


def test_bad_settings_raise():
    params = list(make_mlp().parameters())
    with pytest.raises(ValueError, match="momentum in \\(0, 1\\)"):
        XGrad(params, "sgd", momentum=0.0)
    with pytest.raises(ValueError, match="nesterov=False"):
        XGrad(params, "sgd", momentum=0.9, nesterov=True)
    with pytest.raises(ValueError, match="SGD with momentum, Adam and AdamW"):
        XGrad(params, "lion")
    with pytest.raises(ValueError, match="Invalid lr"):
        XGrad(params, "adam", lr=-1.0)
