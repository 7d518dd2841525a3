"""NovoGrad against pytorch-optimizer, torch-optimizer, optax and the paper's Algorithm 1."""

from __future__ import annotations

import pytest
import torch

from gradkit.optim.novograd import NovoGrad

from .trajectory_checks import (
    assert_trajectories_close,
    check_float32,
    check_matches_reference,
    check_matches_written_out,
    check_resume,
    run_optax,
    run_torch,
)

LR, WD, BETAS = 1e-2, 1e-3, (0.95, 0.98)


def paper_novograd(lr: float, b1: float, b2: float, eps: float, wd: float):
    """Algorithm 1: per layer v = ||g||^2 (then EMA), m = g / (sqrt(v) + eps) + wd w (then b1 m + ...)."""

    def step(ps, gs, st):
        out = []
        for i, (p, g) in enumerate(zip(ps, gs)):
            sq = float((g * g).sum())
            if i not in st:
                v = sq
                m = g / (v**0.5 + eps) + wd * p
            else:
                m, v = st[i]
                v = b2 * v + (1 - b2) * sq
                m = b1 * m + g / (v**0.5 + eps) + wd * p
            st[i] = (m, v)
            out.append(p - lr * m)
        return out

    return step


def novograd(p):
    return NovoGrad(p, lr=LR, betas=BETAS, weight_decay=WD)


@pytest.mark.parametrize("problem", ["mlp", "quadratic"])
def test_matches_paper_algorithm(problem: str) -> None:
    check_matches_written_out(
        novograd, paper_novograd(LR, *BETAS, 1e-8, WD), problem, rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize(
    ("library", "rtol", "atol"),
    [
        ("pytorch_optimizer", 1e-10, 1e-12),
        # torch-optimizer keeps the layer norm in a float32 scalar even for float64 parameters,
        # so: float32 tolerance
        ("torch_optimizer", 1e-5, 1e-6),
    ],
)
@pytest.mark.parametrize("problem", ["mlp", "quadratic"])
def test_matches_library(problem: str, library: str, rtol: float, atol: float) -> None:
    lib = pytest.importorskip(library)
    check_matches_reference(
        novograd,
        lambda p: lib.NovoGrad(p, lr=LR, betas=BETAS, weight_decay=WD),
        problem,
        rtol=rtol,
        atol=atol,
    )


def test_matches_optax() -> None:
    optax = pytest.importorskip("optax")
    got = run_torch(novograd)
    want = run_optax(optax.novograd(LR, b1=BETAS[0], b2=BETAS[1], eps=1e-8, weight_decay=WD))
    assert_trajectories_close(got, want, rtol=1e-10, atol=1e-12)


def test_float32() -> None:
    check_float32(novograd, paper_novograd(LR, *BETAS, 1e-8, WD))


@pytest.mark.parametrize("fused", [False, "flat"])
def test_second_moment_is_one_scalar_per_layer(fused) -> None:
    """On the per-tensor path and on flat buffers (one value per tensor in one buffer)."""
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Linear(7, 2))
    opt = NovoGrad(model.parameters(), lr=LR, fused=fused)
    model(torch.randn(3, 5)).sum().backward()
    opt.step()
    for p in model.parameters():
        st = opt.state[p]
        assert st["exp_avg_sq"].shape == ()
        assert st["exp_avg"].shape == p.shape
        full = [k for k, v in st.items() if k != "step" and v.numel() > 1]
        assert full == ["exp_avg"]  # the only full-size buffer: half of Adam's state
    assert opt.transform.per_tensor_state == ("exp_avg_sq",)
    if fused:
        (flat,) = opt._flat.values()
        assert flat.state_flat["exp_avg_sq"].shape == (4,)  # 4 tensors


def test_layer_scale_invariance() -> None:
    # layer-wise normalization: scaling one layer's gradient by 1000 leaves its step unchanged
    w1, w2 = torch.zeros(4, requires_grad=True), torch.zeros(4, requires_grad=True)
    opt = NovoGrad([w1, w2], lr=0.1)
    g = torch.tensor([1.0, -2.0, 3.0, 0.5])
    for _ in range(5):
        w1.grad, w2.grad = g.clone(), 1000 * g
        opt.step()
    torch.testing.assert_close(w1.detach(), w2.detach(), rtol=1e-6, atol=1e-7)


def test_resume_bit_exact() -> None:
    check_resume(novograd)
