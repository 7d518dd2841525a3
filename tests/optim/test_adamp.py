"""AdamP against torch-optimizer, pytorch-optimizer and the authors' algorithm written out."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gradkit.optim.adamp import AdamP

from .scale_invariant_problem import norm_growth
from .trajectory_checks import (
    check_float32,
    check_matches_reference,
    check_matches_written_out,
    check_resume,
)

LR, WD = 3e-3, 1e-2


def project(p, g, u, delta, wd_ratio, eps):
    """The paper's projection: per output channel, else whole tensor; returns (u, wd ratio)."""
    if p.dim() <= 1:
        return u, 1.0
    for view in (lambda t: t.reshape(t.shape[0], -1), lambda t: t.reshape(1, -1)):
        cos = F.cosine_similarity(view(g), view(p), dim=1, eps=eps).abs()
        if cos.max() < delta / math.sqrt(view(p).shape[1]):
            p_hat = view(p) / (view(p).norm(dim=1, keepdim=True) + eps)
            radial = (p_hat * view(u)).sum(dim=1, keepdim=True)
            return u - (p_hat * radial).reshape(u.shape), wd_ratio
    return u, 1.0


def written_out(lr, b1, b2, eps, wd, delta=0.1, wd_ratio=0.1, nesterov=False, hits=None):
    def step(ps, gs, st):
        st["t"] = st.get("t", 0) + 1
        t = st["t"]
        out = []
        for i, (p, g) in enumerate(zip(ps, gs)):
            m, v = st.get(i, (torch.zeros_like(p), torch.zeros_like(p)))
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            st[i] = (m, v)
            num = b1 * m + (1 - b1) * g if nesterov else m
            d = num / (1 - b1**t) / ((v / (1 - b2**t)).sqrt() + eps)
            d, ratio = project(p, g, d, delta, wd_ratio, eps)
            if hits is not None and ratio != 1.0:
                hits.append(i)
            out.append(p * (1 - lr * wd * ratio) - lr * d)
        return out

    return step


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("problem", ["mlp", "quadratic"])
def test_matches_written_out(problem: str, nesterov: bool) -> None:
    hits: list[int] = []
    check_matches_written_out(
        lambda p: AdamP(p, lr=LR, weight_decay=WD, nesterov=nesterov),
        written_out(LR, 0.9, 0.999, 1e-8, WD, nesterov=nesterov, hits=hits),
        problem,
        rtol=1e-10,
        atol=1e-12,
    )
    if problem == "mlp":
        assert 0 in hits  # the batch-normalized layer is projected


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("problem", ["mlp", "quadratic"])
def test_matches_torch_optimizer(problem: str, nesterov: bool) -> None:
    torch_optimizer = pytest.importorskip("torch_optimizer")
    check_matches_reference(
        lambda p: AdamP(p, lr=LR, weight_decay=WD, nesterov=nesterov),
        lambda p: torch_optimizer.AdamP(p, lr=LR, weight_decay=WD, nesterov=nesterov),
        problem,
        rtol=1e-10,
        atol=1e-12,
    )


@pytest.mark.parametrize("problem", ["mlp", "quadratic"])
def test_matches_pytorch_optimizer(problem: str) -> None:
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    # pytorch-optimizer adds eps to sqrt(v) before bias correction: eps=1e-12 makes it immaterial
    # (the projection's own eps is then 1e-12 in both)
    check_matches_reference(
        lambda p: AdamP(p, lr=LR, eps=1e-12, weight_decay=WD),
        lambda p: pytorch_optimizer.AdamP(p, lr=LR, eps=1e-12, weight_decay=WD),
        problem,
        rtol=1e-8,
        atol=1e-10,
    )


def test_float32() -> None:
    check_float32(lambda p: AdamP(p, lr=LR, weight_decay=WD), written_out(LR, 0.9, 0.999, 1e-8, WD))


def test_keeps_scale_invariant_norm_from_growing() -> None:
    adam_growth, adam_loss = norm_growth(lambda p, lr: torch.optim.Adam(p, lr=lr), lr=0.01)
    adamp_growth, adamp_loss = norm_growth(lambda p, lr: AdamP(p, lr=lr), lr=0.01)
    assert adam_growth > 1.03  # Adam inflates the norm of the scale-invariant weight
    assert adamp_growth - 1 < 0.1 * (adam_growth - 1)
    assert adamp_loss < 1.1 * adam_loss  # same effective direction: training is not hurt


def test_runs_on_flat_buffers_with_row_segments() -> None:
    """The projection reduces per row, so the flat path hands it row boundaries."""
    transform = AdamP([torch.zeros(2, 2, requires_grad=True)]).transform
    assert transform.flat_ok and transform.segments == "rows"


def test_resume_bit_exact() -> None:
    check_resume(lambda p: AdamP(p, lr=LR, weight_decay=WD))
