"""AMSGrad: torch.optim.Adam(amsgrad=True), optax, and the convex counter-example."""

from __future__ import annotations

import pytest
import torch

from gradkit.optim.adam import Adam
from gradkit.optim.amsgrad import AMSGrad

from .trajectory_checks import (
    assert_moves,
    assert_trajectories_close,
    check_resume,
    run_optax,
    run_torch,
)

LR, WD = 3e-3, 1e-2


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("problem", ["mlp", "quadratic"])
def test_matches_torch_adam_amsgrad(problem: str, dtype: torch.dtype) -> None:
    got = run_torch(lambda p: AMSGrad(p, lr=LR, weight_decay=WD), problem=problem, dtype=dtype)
    want = run_torch(
        lambda p: torch.optim.Adam(p, lr=LR, weight_decay=WD, amsgrad=True, foreach=False),
        problem=problem,
        dtype=dtype,
    )
    assert_moves(got, problem)
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    assert_trajectories_close(got, want, **tol)


def test_matches_optax_without_nu_bias_correction_in_the_max() -> None:
    # optax maxes the bias-corrected v by default; bias_correction_nu=False maxes the raw v, as
    # torch.optim does, and then optax does not bias-correct v at all. With b2 = 0 the two agree.
    optax = pytest.importorskip("optax")
    got = run_torch(lambda p: AMSGrad(p, lr=LR, betas=(0.9, 0.0)), problem="quadratic")
    want = run_optax(
        optax.amsgrad(LR, b1=0.9, b2=0.0, eps=1e-8, bias_correction_nu=False),
        problem="quadratic",
    )
    assert_trajectories_close(got, want, rtol=1e-10, atol=1e-12)


def test_convex_counter_example_of_reddi_et_al() -> None:
    # f_t(x) = C x on every third step, -x otherwise, x in [-1, 1]: the average loss (C - 2)/3 x
    # is minimized at x = -1. With b1 = 0 and b2 = 1 / (1 + C^2) Adam's large step after each C
    # gradient is damped by v, while the two -1 steps are not, so Adam drifts to x = +1 (the
    # worst point); AMSGrad's running max of v keeps the steps of -1 gradients small.
    c, lr = 3.0, 0.01
    finals = {}
    for cls in (Adam, AMSGrad):
        x = torch.zeros(1, requires_grad=True)
        opt = cls([x], lr=lr, betas=(0.0, 1.0 / (1.0 + c * c)))
        for t in range(900):
            x.grad = torch.tensor([c if t % 3 == 0 else -1.0])
            opt.step()
            with torch.no_grad():
                x.clamp_(-1.0, 1.0)  # projection onto the feasible set
        finals[cls.__name__] = float(x.detach())
    assert finals["Adam"] == 1.0
    assert finals["AMSGrad"] < -0.95


def test_requires_amsgrad_flag() -> None:
    with pytest.raises(ValueError, match="amsgrad"):
        AMSGrad([torch.zeros(1, requires_grad=True)], amsgrad=False)


def test_resume_bit_exact() -> None:
    check_resume(lambda p: AMSGrad(p, lr=LR, weight_decay=WD))
