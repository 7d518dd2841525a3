"""Entropy-SGD against the paper's Algorithm 1 written out (float64, seeded Langevin noise)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from gradkit.optim.entropy_sgd import EntropySGD
from helpers import (
    make_mlp,
    max_rel_diff,
    regression_batches,
    single_threaded_tests,  # noqa: F401  (autouse: one intra-op thread)
    train,
)
from optimizer_checks import resume_is_bit_exact


def _reference(
    model,
    batches,
    *,
    lr,
    gamma,
    scoping,
    sgld_lr,
    noise,
    alpha,
    L,
    seed,
    momentum=0.0,
    nesterov=False,
):
    """Chaudhari et al., Algorithm 1; the inner loop's minibatches are the ones of ``batches``
    (each outer step re-uses its batch for all L Langevin steps, like the closure does)."""
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(seed)
    x_w = [p.detach().clone() for p in params]
    buf = None
    for t, (xb, yb) in enumerate(batches):
        g_t = gamma * (1 + scoping) ** t
        xp = [w.clone() for w in x_w]
        mu = [w.clone() for w in x_w]
        for _ in range(L):
            with torch.no_grad():
                for p, v in zip(params, xp):
                    p.copy_(v)
            loss = nn.functional.mse_loss(model(xb), yb)
            grads = torch.autograd.grad(loss, params)
            dx = [g - g_t * (w - v) for g, w, v in zip(grads, x_w, xp)]
            xp = [
                v
                - sgld_lr * d
                + math.sqrt(sgld_lr) * noise * torch.randn(v.shape, generator=gen, dtype=v.dtype)
                for v, d in zip(xp, dx)
            ]
            mu = [(1 - alpha) * m + alpha * v for m, v in zip(mu, xp)]
        direction = [g_t * (w - m) for w, m in zip(x_w, mu)]
        if momentum:
            buf = direction if buf is None else [momentum * b + d for b, d in zip(buf, direction)]
            direction = [d + momentum * b for d, b in zip(direction, buf)] if nesterov else buf
        x_w = [w - lr * d for w, d in zip(x_w, direction)]
    with torch.no_grad():
        for p, w in zip(params, x_w):
            p.copy_(w)


HP = dict(lr=0.5, gamma=0.03, gamma_scoping=1e-3, sgld_lr=0.05, noise=1e-3, alpha=0.75)


@pytest.mark.parametrize("outer", [dict(), dict(momentum=0.9), dict(momentum=0.9, nesterov=True)])
def test_trajectory_matches_algorithm_box_float64(outer):
    model = make_mlp(dtype=torch.float64)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    batches = regression_batches(100, dtype=torch.float64)
    opt = EntropySGD(a.parameters(), seed=7, langevin_steps=4, **HP, **outer)
    train(a, opt, batches, use_closure=True)
    _reference(
        b,
        batches,
        scoping=HP["gamma_scoping"],
        L=4,
        seed=7,
        **{k: v for k, v in HP.items() if k != "gamma_scoping"},
        **outer,
    )
    assert max_rel_diff(a, b) < 1e-10


def test_trains_and_noise_is_reproducible():
    batches = regression_batches(60)
    runs = []
    for _ in range(2):
        model = make_mlp()
        hp = {**HP, "lr": 1 / HP["gamma"]}  # lr * gamma = 1: x moves to the Langevin average
        opt = EntropySGD(model.parameters(), seed=3, langevin_steps=5, **hp)
        train(model, opt, batches, use_closure=True)
        runs.append(model)
    assert max_rel_diff(runs[0], runs[1]) == 0.0
    x, y = batches[0]
    start = nn.functional.mse_loss(make_mlp()(x), y)
    assert nn.functional.mse_loss(runs[0](x), y) < 0.5 * start


def test_state_dict_resume_is_exact(tmp_path):
    assert resume_is_bit_exact(
        lambda p: EntropySGD(p, seed=11, langevin_steps=3, momentum=0.9, **HP),
        tmp_path,
        steps=20,
        use_closure=True,
    )


def test_missing_closure_is_a_clear_error():
    opt = EntropySGD(make_mlp().parameters())
    with pytest.raises(RuntimeError, match="EntropySGD needs a closure.*Langevin"):
        opt.step()
