"""Lion and Lion-kappa against lion-pytorch, pytorch-optimizer, optax and the update written out."""

from __future__ import annotations

import pytest
import torch

from gradkit.optim.lion import Lion, LionKappa

from .trajectory_checks import (
    assert_moves,
    assert_trajectories_close,
    check_matches_reference,
    check_matches_written_out,
    check_resume,
    run_optax,
    run_torch,
)

LR, WD = 1e-3, 0.1
KAPPA_MAPS = {
    "sign": torch.sign,
    "huber": lambda c: c.clamp(-1.0, 1.0),
    "l2": lambda c: c / c.norm(),
}


def written_out(lr: float, b1: float, b2: float, wd: float, kappa: str = "sign"):
    """Lion-kappa: c = b1 m + (1-b1) g; x <- x - lr (grad_kappa(c) + wd x); m <- b2 m + (1-b2) g."""
    grad_kappa = KAPPA_MAPS[kappa]

    def step(ps, gs, st):
        out = []
        for i, (p, g) in enumerate(zip(ps, gs)):
            m = st.get(i, torch.zeros_like(p))
            c = b1 * m + (1 - b1) * g
            out.append(p - lr * (grad_kappa(c) + wd * p))
            st[i] = b2 * m + (1 - b2) * g
        return out

    return step


def lion(p):
    return Lion(p, lr=LR, weight_decay=WD)


# Sign-based methods are compared in float64: a rounding difference can only flip a sign when an
# entry of c is within rounding of zero, which random float64 problems do not produce.
@pytest.mark.parametrize("problem", ["mlp", "quadratic"])
def test_lion_matches_written_out(problem: str) -> None:
    check_matches_written_out(lion, written_out(LR, 0.9, 0.99, WD), problem, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("library", ["lion_pytorch", "pytorch_optimizer"])
@pytest.mark.parametrize("problem", ["mlp", "quadratic"])
def test_lion_matches_library(problem: str, library: str) -> None:
    lib = pytest.importorskip(library)
    check_matches_reference(
        lion, lambda p: lib.Lion(p, lr=LR, weight_decay=WD), problem, rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("problem", ["mlp", "quadratic"])
def test_lion_matches_optax(problem: str) -> None:
    optax = pytest.importorskip("optax")
    got = run_torch(lion, problem=problem)
    want = run_optax(optax.lion(LR, b1=0.9, b2=0.99, weight_decay=WD), problem=problem)
    assert_trajectories_close(got, want, rtol=1e-12, atol=1e-12)


def test_lion_kappa_huber_matches_optax_refined() -> None:
    optax = pytest.importorskip("optax")
    # optax's "refined" Lion maps c to c where |c| < 1 and to sign(c) elsewhere: clamp(c, -1, 1)
    tx = optax.chain(
        optax.scale_by_lion(b1=0.9, b2=0.99, mode="refined"),
        optax.add_decayed_weights(WD),
        optax.scale_by_learning_rate(0.05),
    )
    got = run_torch(lambda p: LionKappa(p, lr=0.05, weight_decay=WD, kappa="huber"))
    want = run_optax(tx)
    assert_moves(got)
    assert_trajectories_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kappa", ["sign", "huber", "l2"])
@pytest.mark.parametrize("problem", ["mlp", "quadratic"])
def test_lion_kappa_matches_written_out(kappa: str, problem: str) -> None:
    lr = 0.05 if kappa == "huber" else LR
    check_matches_written_out(
        lambda p: LionKappa(p, lr=lr, weight_decay=WD, kappa=kappa),
        written_out(lr, 0.9, 0.99, WD, kappa),
        problem,
        rtol=1e-10,
        atol=1e-12,
    )


@pytest.mark.parametrize("kappa", ["sign", "huber", "l2"])
def test_iterates_stay_in_the_box(kappa: str) -> None:
    # Lion-kappa paper: Lion-kappa with decoupled decay wd solves min f(x) s.t. x in the ball
    # {||x||_* <= 1 / wd} of the dual norm of kappa (l_inf for sign and huber, l2 for l2). With
    # lr * wd <= 1 the ball is invariant, and from outside the excess radius contracts at least by
    # (1 - lr * wd) per step. The minimizer (x = 50) lies far outside, so x ends on the boundary.
    lr, wd, steps = 0.05, 0.5, 300
    order = 2 if kappa == "l2" else float("inf")
    bound = 1.0 / wd
    inside = torch.empty(40).uniform_(-1.9, 1.9, generator=torch.Generator().manual_seed(0))
    inside = inside * (1.9 / float(torch.linalg.vector_norm(inside, order)))
    for start in (inside, torch.full((40,), 6.0)):
        x = start.clone().requires_grad_(True)
        opt = LionKappa([x], lr=lr, weight_decay=wd, kappa=kappa)
        radius = [float(torch.linalg.vector_norm(x.detach(), order))]
        for _ in range(steps):
            x.grad = x.detach() - 50.0
            opt.step()
            radius.append(float(torch.linalg.vector_norm(x.detach(), order)))
        for t, r in enumerate(radius):
            excess0 = max(radius[0] - bound, 0.0)
            assert r <= (bound + excess0 * (1 - lr * wd) ** t) * (1 + 1e-5), (t, r)
        assert radius[-1] > 0.99 * bound  # pushed against the wall by the far minimizer


def test_lion_state_is_one_buffer() -> None:
    w, b = torch.randn(4, 3, requires_grad=True), torch.randn(3, requires_grad=True)
    for opt in (Lion([w, b], lr=LR), LionKappa([w, b], lr=LR, kappa="l2")):
        w.grad, b.grad = torch.randn(4, 3), torch.randn(3)
        opt.step()
        for p in (w, b):
            buffers = [v for k, v in opt.state[p].items() if k != "step"]
            assert len(buffers) == 1 and buffers[0].shape == p.shape


def test_flat_ok() -> None:
    """Every kappa runs on flat buffers; the l2 kappa reduces per tensor, so it asks for the
    tensor boundaries (its flat trajectory is tested in tests/core/test_segments.py)."""
    assert Lion([torch.zeros(1, requires_grad=True)]).transform.flat_ok
    assert Lion([torch.zeros(1, requires_grad=True)]).transform.segments is None
    l2 = LionKappa([torch.zeros(1, requires_grad=True)], kappa="l2").transform
    assert l2.flat_ok and l2.segments == "tensors"


@pytest.mark.parametrize("cls", [Lion, LionKappa])
def test_resume_bit_exact(cls: type) -> None:
    check_resume(lambda p: cls(p, lr=LR, weight_decay=WD))
