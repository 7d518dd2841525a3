"""MARS (approximate, AdamW and Lion variants) against pytorch-optimizer and the paper."""

from __future__ import annotations

import copy

import pytest
import pytorch_optimizer as po
import torch
from torch import nn

import gradkit
from gradkit.optim.mars import MARS
from helpers import make_mlp, max_rel_diff, regression_batches, train
from optimizer_checks import Quadratic, compare, resume_is_bit_exact, train_quadratic


def _first_grads(model, problem):
    """Gradients of the first step, to seed pytorch-optimizer's g_{t-1} (see differences)."""
    m = copy.deepcopy(model)
    if problem == "mlp":
        x, y = regression_batches(1)[0]
        nn.functional.mse_loss(m(x), y).backward()
    else:
        g = torch.Generator().manual_seed(3)
        m(0.1 * torch.randn(m.a.shape[0], generator=g).to(m.a.dtype)).backward()
    return [p.grad.clone() for p in m.parameters()]


@pytest.mark.parametrize("problem", ["mlp", "quadratic"])
@pytest.mark.parametrize(("mars_type", "lr"), [("adamw", 3e-3), ("lion", 3e-4)])
def test_matches_pytorch_optimizer(problem, mars_type, lr):
    model = make_mlp(0) if problem == "mlp" else Quadratic()
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    kw = dict(lr=lr, weight_decay=0.1, mars_type=mars_type)
    if mars_type == "adamw":  # the sign direction reads no eps (MARS refuses one with "lion")
        kw["eps"] = 1e-12
    ours = MARS(a.parameters(), **kw)
    theirs = po.MARS(b.parameters(), optimize_1d=True, **kw)
    # pytorch-optimizer starts from g_0 = 0; the paper's x_1 = x_0 gives no correction at t = 1.
    # Seeding its previous gradient with g_1 makes the two algorithms identical.
    for p, g in zip(b.parameters(), _first_grads(model, problem)):
        p.grad = g
    for group in theirs.param_groups:
        theirs.init_group(group)
        for p in group["params"]:
            theirs.state[p]["last_grad"].copy_(p.grad)
    for m, opt in ((a, ours), (b, theirs)):
        if problem == "mlp":
            train(m, opt, regression_batches(120))
        else:
            train_quadratic(m, opt, 120)
    assert max_rel_diff(a, b) < 1e-5


def test_written_out_algorithm():
    """Approximate MARS-AdamW of the paper, step by step in float64."""
    torch.manual_seed(0)
    shapes = [(6, 4), (4,)]
    params = [torch.randn(s) for s in shapes]
    grads = [[3.0 * torch.randn(s) for s in shapes] for _ in range(120)]
    lr, b1, b2, gamma, eps, wd = 1e-2, 0.95, 0.99, 0.025, 1e-8, 0.1
    ps = [p.clone().requires_grad_() for p in params]
    opt = MARS(ps, lr=lr, betas=(b1, b2), gamma=gamma, eps=eps, weight_decay=wd)
    xs = [p.double() for p in params]
    ms = [torch.zeros_like(x) for x in xs]
    vs = [torch.zeros_like(x) for x in xs]
    prev = None
    for t, gs in enumerate(grads, start=1):
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()
        gs = [g.double() for g in gs]
        prev = prev or gs
        for i, (g, gp) in enumerate(zip(gs, prev)):
            c = g + gamma * b1 / (1 - b1) * (g - gp)
            if c.norm() > 1:
                c = c / c.norm()
            ms[i] = b1 * ms[i] + (1 - b1) * c
            vs[i] = b2 * vs[i] + (1 - b2) * c * c
            m_hat, v_hat = ms[i] / (1 - b1**t), vs[i] / (1 - b2**t)
            xs[i] = xs[i] - lr * (m_hat / (v_hat.sqrt() + eps) + wd * xs[i])
        prev = gs
    for p, x in zip(ps, xs):
        torch.testing.assert_close(p.detach().double(), x, rtol=1e-5, atol=1e-6)


def test_group_without_correction_is_adamw():
    """gamma=0 and no clipping is AdamW: the recipe for the authors' 1-D tensor split."""

    def ours(p):
        return MARS(
            p, lr=3e-3, betas=(0.9, 0.95), gamma=0.0, max_correction_norm=None, weight_decay=0.1
        )

    def theirs(p):
        return torch.optim.AdamW(p, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)

    assert compare(ours, theirs) < 1e-6


@pytest.mark.parametrize("mars_type", ["adamw", "lion"])
def test_resume_is_bit_exact(mars_type, tmp_path):
    lr = 3e-3 if mars_type == "adamw" else 3e-4
    assert resume_is_bit_exact(
        lambda p: MARS(p, lr=lr, weight_decay=0.1, mars_type=mars_type), tmp_path
    )


def test_state_memory():
    p = torch.zeros(5, 3, requires_grad=True)
    for kind, n_buffers in (("adamw", 3), ("lion", 2)):
        opt = MARS([p], mars_type=kind)
        p.grad = torch.ones_like(p)
        opt.step()
        full = [v for k, v in opt.state[p].items() if k != "step" and v.numel() == p.numel()]
        assert len(full) == n_buffers  # previous gradient + moments


def test_registry_entry():
    info = gradkit.optim.registry.get_info("mars")
    assert (info.arxiv_id, info.cls) == ("2411.10438", MARS)


def test_runs_on_flat_buffers_with_tensor_segments():
    """Per-tensor norm of the correction: the flat path hands the rule the tensor boundaries."""
    opt = MARS([torch.zeros(3, 2, requires_grad=True)])
    assert opt.transform.flat_ok is True and opt.transform.segments == "tensors"
