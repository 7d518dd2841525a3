"""diffGrad against torch-optimizer, pytorch-optimizer and the paper's update written out."""

from __future__ import annotations

import math

import pytest
import torch

from gradkit.optim.diffgrad import DiffGrad

from .trajectory_checks import (
    check_float32,
    check_matches_reference,
    check_matches_written_out,
    check_resume,
)

LR = 3e-3


def paper_diffgrad(lr: float, b1: float, b2: float, eps: float, wd: float):
    """diffGrad as in the paper: Adam's bias-corrected ratio times sigmoid(|g_{t-1} - g_t|)."""

    def step(ps, gs, st):
        st["t"] = st.get("t", 0) + 1
        t = st["t"]
        out = []
        for i, (p, g) in enumerate(zip(ps, gs)):
            g = g + wd * p
            m, v, prev = st.get(i, (torch.zeros_like(p), torch.zeros_like(p), torch.zeros_like(p)))
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            xi = 1 / (1 + torch.exp(-(prev - g).abs()))
            m_hat = m / (1 - b1**t)
            v_hat = v / (1 - b2**t)
            out.append(p - lr * xi * m_hat / (v_hat.sqrt() + eps))
            st[i] = (m, v, g)
        return out

    return step


def _tiny_eps(p):
    """diffGrad with eps = 1e-12: the libraries' different placement of eps is then immaterial."""
    return DiffGrad(p, lr=LR, eps=1e-12, weight_decay=1e-2)


@pytest.mark.parametrize("problem", ["mlp", "quadratic"])
def test_matches_paper_algorithm(problem: str) -> None:
    check_matches_written_out(
        lambda p: DiffGrad(p, lr=LR, weight_decay=1e-2),
        paper_diffgrad(LR, 0.9, 0.999, 1e-8, 1e-2),
        problem,
        rtol=1e-10,
        atol=1e-12,
    )


@pytest.mark.parametrize("problem", ["mlp", "quadratic"])
def test_matches_torch_optimizer(problem: str) -> None:
    torch_optimizer = pytest.importorskip("torch_optimizer")
    # the library adds eps to sqrt(v) before bias correction; eps=1e-12 makes that immaterial
    check_matches_reference(
        _tiny_eps,
        lambda p: torch_optimizer.DiffGrad(p, lr=LR, eps=1e-12, weight_decay=1e-2),
        problem,
        rtol=1e-8,
        atol=1e-9,
    )


@pytest.mark.parametrize("problem", ["mlp", "quadratic"])
def test_matches_pytorch_optimizer(problem: str) -> None:
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    check_matches_reference(
        _tiny_eps,
        lambda p: pytorch_optimizer.DiffGrad(
            p, lr=LR, eps=1e-12, weight_decay=1e-2, weight_decouple=False
        ),
        problem,
        rtol=1e-8,
        atol=1e-9,
    )


def test_float32_close_to_float64() -> None:
    check_float32(lambda p: DiffGrad(p, lr=LR), paper_diffgrad(LR, 0.9, 0.999, 1e-8, 0.0))


def test_friction_halves_the_first_step_of_a_tiny_gradient() -> None:
    # g_0 = 0, so xi_1 = sigmoid(|g_1|) ~ 1/2 for a tiny gradient: half of Adam's first step
    p = torch.zeros(3, requires_grad=True)
    opt = DiffGrad([p], lr=0.1)
    p.grad = torch.full((3,), 1e-4)
    opt.step()
    assert torch.allclose(p.detach(), torch.full((3,), -0.05), rtol=1e-3)
    assert math.isclose(float(p.detach()[0]), -0.1 / (1 + math.exp(-1e-4)), rel_tol=1e-3)


def test_resume_bit_exact() -> None:
    check_resume(lambda p: DiffGrad(p, lr=LR, weight_decay=1e-2))
