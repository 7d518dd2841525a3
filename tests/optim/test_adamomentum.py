"""AdaMomentum against the paper's algorithm box written out (no library implements it)."""

from __future__ import annotations

import pytest
import torch

from gradkit.optim.adamomentum import AdaMomentum

from .trajectory_checks import (
    check_float32,
    check_matches_written_out,
    check_resume,
)

LR = 3e-3


def paper_adamomentum(lr: float, b1: float, b2: float, eps: float, wd: float):
    """Wang et al., arXiv 2106.11514, the AdaMomentum algorithm box (plus AdamW-style decay):

    m_t = b1 m_{t-1} + (1 - b1) g_t
    v_t = b2 v_{t-1} + (1 - b2) m_t^2 + eps
    m_hat = m_t / (1 - b1^t),  v_hat = v_t / (1 - b2^t)
    x_t = x_{t-1} - lr m_hat / sqrt(v_hat)          (after x <- (1 - lr wd) x)
    """

    def step(ps, gs, st):
        st["t"] = st.get("t", 0) + 1
        t = st["t"]
        out = []
        for i, (p, g) in enumerate(zip(ps, gs)):
            m, v = st.get(i, (torch.zeros_like(p), torch.zeros_like(p)))
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * m * m + eps
            m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
            out.append((1 - lr * wd) * p - lr * m_hat / v_hat.sqrt())
            st[i] = (m, v)
        return out

    return step


@pytest.mark.parametrize("wd", [0.0, 1e-2])
@pytest.mark.parametrize("problem", ["mlp", "quadratic"])
def test_matches_paper_algorithm(problem: str, wd: float) -> None:
    check_matches_written_out(
        lambda p: AdaMomentum(p, lr=LR, weight_decay=wd),
        paper_adamomentum(LR, 0.9, 0.999, 1e-8, wd),
        problem,
        rtol=1e-10,
        atol=1e-12,
    )


def test_float32() -> None:
    check_float32(lambda p: AdaMomentum(p, lr=LR), paper_adamomentum(LR, 0.9, 0.999, 1e-8, 0.0))


def test_differs_from_adam() -> None:
    # the second moment of m, not of g: on a gradient that flips sign every step, m stays small,
    # so v (of m) is much smaller than Adam's and the steps are larger than Adam's
    x = torch.zeros(1, requires_grad=True)
    y = torch.zeros(1, requires_grad=True)
    a, b = AdaMomentum([x], lr=0.01), torch.optim.Adam([y], lr=0.01)
    for t in range(50):
        g = torch.tensor([1.0 if t % 2 == 0 else -1.0])
        x.grad, y.grad = g.clone(), g.clone()
        a.step()
        b.step()
    assert float(a.state[x]["exp_avg_sq"][0]) < 0.1 * float(b.state[y]["exp_avg_sq"][0])


def test_resume_bit_exact() -> None:
    check_resume(lambda p: AdaMomentum(p, lr=LR, weight_decay=1e-2))
