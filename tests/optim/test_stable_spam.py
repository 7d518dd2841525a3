"""Stable-SPAM against pytorch-optimizer and the authors' algorithm written out."""

from __future__ import annotations

import math

import pytest
import pytorch_optimizer as po
import torch

import gradkit
from gradkit.optim.stable_spam import StableSPAM
from optimizer_checks import compare, one_step, resume_is_bit_exact, state_buffers


@pytest.mark.parametrize("problem", ["mlp", "quadratic"])
def test_matches_pytorch_optimizer(problem):
    def ours(p):
        return StableSPAM(p, lr=1e-2, reset_interval=50, weight_decay=0.1)

    def theirs(p):
        return po.StableSPAM(p, lr=1e-2, update_proj_gap=50, weight_decay=0.1)

    assert compare(ours, theirs, problem) < 1e-5


def _reference(p0, grads, lr, b1, b2, g1, g2, theta, gap, t_max, eta_min, eps, wd):
    """Stable-SPAM for one tensor, float64, as the authors' code computes it (with the
    bias corrections of the clipping and norm statistics on the global step)."""
    x = p0.double()
    m = v = torch.zeros_like(x)
    m_max = m_norm = v_norm = 0.0
    for t, g in enumerate(grads, start=1):
        g = g.double()
        if t_max is None:
            s = 1.0
        elif t >= t_max:
            s = eta_min
        else:
            s = eta_min + (1 - eta_min) * (1 + math.cos(math.pi * t / (t_max + 1))) / 2
        x = x * (1 - lr * wd)
        big = g.abs().max()
        m_max = theta * m_max + (1 - theta) * big
        thr = m_max / (1 - theta**t)
        g = torch.where(g.abs() > thr, g / big * thr, g)
        n = g.norm()
        m_norm = g1 * s * m_norm + (1 - g1 * s) * n
        v_norm = g2 * v_norm + (1 - g2) * n**2
        c = (m_norm / (1 - (g1 * s) ** t)) / ((v_norm / (1 - g2**t)).sqrt() + eps)
        g = g / n * c
        tau = t if t < gap else t % gap + 1
        if t % gap == 0:
            m, v = torch.zeros_like(x), torch.zeros_like(x)
        beta1 = b1 * s
        m = beta1 * m + (1 - beta1) * g
        v = b2 * v + (1 - b2) * g * g
        x = x - lr / (1 - beta1**tau) * m / ((v / (1 - b2**tau)).sqrt() + eps)
    return x


@pytest.mark.parametrize("t_max", [None, 80])
def test_written_out_algorithm(t_max):
    torch.manual_seed(0)
    p0 = torch.randn(8, 5)
    grads = [torch.randn(8, 5) * (20.0 if t % 17 == 0 else 1.0) for t in range(120)]
    hp = dict(
        lr=1e-2,
        b1=0.9,
        b2=0.999,
        g1=0.7,
        g2=0.9,
        theta=0.999,
        gap=40,
        t_max=t_max,
        eta_min=0.5,
        eps=1e-8,
        wd=0.05,
    )
    p = p0.clone().requires_grad_()
    opt = StableSPAM(
        [p],
        lr=hp["lr"],
        betas=(hp["b1"], hp["b2"]),
        gamma1=hp["g1"],
        gamma2=hp["g2"],
        theta=hp["theta"],
        reset_interval=hp["gap"],
        t_max=t_max,
        eta_min=hp["eta_min"],
        eps=hp["eps"],
        weight_decay=hp["wd"],
    )
    for g in grads:
        p.grad = g.clone()
        opt.step()
    expected = _reference(p0, grads, **hp)
    torch.testing.assert_close(p.detach().double(), expected, rtol=1e-5, atol=1e-6)


def test_resume_is_bit_exact(tmp_path):
    # the reset (every 20 steps) and the cosine decay both cross the checkpoint at step 30
    assert resume_is_bit_exact(
        lambda p: StableSPAM(p, lr=1e-2, reset_interval=20, t_max=50, weight_decay=0.1),
        tmp_path,
    )


def test_registry_entry():
    info = gradkit.optim.registry.get_info("stable-spam")
    assert (info.arxiv_id, info.cls) == ("2502.17055", StableSPAM)


def test_state_memory():
    # Adam's two moments; running max, norm mean and norm square mean as scalars
    assert state_buffers(*one_step(StableSPAM)) == (2, 3)


def test_a_spike_does_not_dominate_the_following_steps():
    """The paper's claim: spiked gradients accumulate in Adam's moments and steer the next
    steps; Stable-SPAM's clipping and norm scaling limit that. Measured as the mean cosine
    between the 20 steps after a 1e4x spike and the spike's direction."""

    def cosine_after_spike(make):
        gen = torch.Generator().manual_seed(0)
        p = torch.zeros(20, 10, requires_grad=True)
        opt = make([p])
        cosines, spike = [], None
        for t in range(1, 71):
            g = torch.randn(20, 10, generator=gen)
            if t == 50:
                g = spike = g * 1e4
            before = p.detach().clone()
            p.grad = g
            opt.step()
            if t > 50:
                step = (before - p.detach()).flatten()
                cosines.append(torch.cosine_similarity(step, spike.flatten(), dim=0).item())
        return sum(cosines) / len(cosines)

    assert cosine_after_spike(lambda ps: torch.optim.Adam(ps, lr=1e-3)) > 0.75
    assert cosine_after_spike(lambda ps: StableSPAM(ps, lr=1e-3)) < 0.55


def test_runs_on_flat_buffers_with_tensor_segments():
    """Per-tensor maxima and norms: the flat path hands the rule the tensor boundaries."""
    opt = StableSPAM([torch.zeros(3, 2, requires_grad=True)])
    assert opt.transform.flat_ok is True and opt.transform.segments == "tensors"
    assert set(opt.transform.per_tensor_state) == {"max_avg", "norm_avg", "norm_sq_avg"}
