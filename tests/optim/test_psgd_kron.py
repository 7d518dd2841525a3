"""PSGD Kron against pytorch-optimizer's ``Kron`` (a port of kron_torch) with the same probes.

Both draw their probes from torch's global generator, one ``randn`` per parameter in order on an
update step, so seeding torch gives both the same probes. The reference solves its triangular
systems in float32 even for float64 parameters; with that one step made float64 (its module's
``solve_triangular_right`` patched) the float64 trajectories agree to 1e-10 (measured: 1e-16
after 40 steps). Its balancing (random, 1 step in 100) is off (``balance_prob=0``), its update
probability 1 (every step, its default for the first 500 steps).
"""

from __future__ import annotations

import pytest
import pytorch_optimizer.optimizer.psgd as reference_module
import torch
from pytorch_optimizer import Kron

import gradkit
from gradkit.optim.psgd_kron import PSGDKron

from .trajectory_checks import assert_moves, assert_trajectories_close, run_torch

LR = 1e-2


@pytest.fixture
def float64_solve(monkeypatch):
    def solve(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.size(-1))
        return torch.linalg.solve_triangular(a, flat, upper=True, left=False).reshape_as(x)

    monkeypatch.setattr(reference_module, "solve_triangular_right", solve)


def _seeded(factory):
    def make(ps):
        torch.manual_seed(1234)  # the probes
        return factory(ps)

    return make


def _theirs(ps, **kw):
    return Kron(
        ps, lr=LR, balance_prob=0.0, precondition_dtype=torch.float64,
        pre_conditioner_update_probability=1.0, **kw,
    )  # fmt: skip


@pytest.mark.parametrize("problem", ["mlp", "quadratic"])
def test_trajectory_matches_pytorch_optimizer_kron(float64_solve, problem: str) -> None:
    got = run_torch(_seeded(lambda ps: PSGDKron(ps, lr=LR)), steps=40, problem=problem)
    want = run_torch(_seeded(_theirs), steps=40, problem=problem)
    assert_moves(got, problem)
    assert_trajectories_close(got, want, rtol=0, atol=1e-10)


def test_trajectory_matches_with_other_momentum_and_fit_rate(float64_solve) -> None:
    ours = _seeded(lambda ps: PSGDKron(ps, lr=LR, momentum=0.5, precondition_lr=0.3))
    theirs = _seeded(lambda ps: _theirs(ps, momentum=0.5))

    def theirs_lr(ps):
        opt = theirs(ps)
        for g in opt.param_groups:
            g["precondition_lr"] = 0.3
        return opt

    got = run_torch(ours, steps=40)
    want = run_torch(theirs_lr, steps=40)
    assert_trajectories_close(got, want, rtol=0, atol=1e-10)


def test_float32_trajectory_close_to_the_reference_as_shipped() -> None:
    """float32 parameters, the reference unpatched (float32 solves in both)."""
    got = run_torch(_seeded(lambda ps: PSGDKron(ps, lr=LR)), steps=40, dtype=torch.float32)
    want = run_torch(
        _seeded(
            lambda ps: Kron(ps, lr=LR, balance_prob=0.0, pre_conditioner_update_probability=1.0)
        ),
        steps=40,
        dtype=torch.float32,
    )
    assert_trajectories_close(got, want, rtol=0, atol=1e-4)


def test_probes_are_drawn_only_on_refit_steps() -> None:
    w = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    opt = PSGDKron([w], precondition_frequency=3)
    qs, rng = [], []
    for _ in range(5):
        w.grad = torch.ones(4, 3, dtype=torch.float64)
        before = torch.get_rng_state()
        opt.step()
        rng.append(torch.equal(before, torch.get_rng_state()))
        qs.append(opt.state[w]["kron_q_left"].clone())
    assert rng == [False, True, True, False, True]  # refits on steps 1 and 4
    assert torch.equal(qs[0], qs[2]) and not torch.equal(qs[2], qs[3])


def test_factor_layout_and_dtypes() -> None:
    w = torch.nn.Parameter(torch.randn(5, 4).bfloat16())
    b = torch.nn.Parameter(torch.randn(5).bfloat16())
    big = torch.nn.Parameter(torch.randn(3, 20))
    opt = gradkit.create_optimizer([w, b, big], "psgd_kron", max_size_triangular=10)
    for p in (w, b, big):
        p.grad = torch.randn_like(p)
    opt.step()
    st = opt.state
    assert st[w]["kron_q_left"].shape == (5, 5) and st[w]["kron_q_left"].dtype == torch.float32
    assert torch.equal(st[w]["kron_q_left"], st[w]["kron_q_left"].triu())
    assert st[b]["kron_q_left"].shape == (5,) and st[b]["kron_q_right"].numel() == 0
    assert st[big]["kron_q_right"].shape == (20,)  # longer than max_size_triangular: diagonal
    assert w.dtype == torch.bfloat16


def test_step_rms_is_clipped() -> None:
    w = torch.nn.Parameter(torch.zeros(6, 6, dtype=torch.float64))
    opt = PSGDKron([w], lr=1.0, momentum=0.0)
    w.grad = torch.full((6, 6), 1e3, dtype=torch.float64)
    opt.step()
    assert float(w.detach().square().mean().sqrt()) == pytest.approx(1.1, rel=1e-6)


def test_complex_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="complex"):
        PSGDKron([torch.nn.Parameter(torch.randn(3, 3, dtype=torch.complex64))])


@pytest.mark.parametrize("seed", [0, 1])
def test_fitted_preconditioner_is_the_inverse_root_of_the_gradient_covariance(seed: int) -> None:
    """Li's criterion ``E[h^T P h + v^T P^-1 v]`` is minimal at ``P = E[h h^T]^(-1/2)``; with
    gradients ``h = L_1 Z L_2^T`` (covariance ``C_1 kron C_2``) the Kronecker fit reaches it.
    The fit is stochastic: the average of ``P`` over the last 800 of 1200 refits is within 10%
    (measured: 2-5% over four seeds; from 90% at the start)."""
    from gradkit.core.transform import StepContext
    from gradkit.transforms.psgd_kron import ScaleByPSGDKron

    f64 = torch.float64
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the probes

    def spd(n: int) -> torch.Tensor:
        q, _ = torch.linalg.qr(torch.randn(n, n, dtype=f64, generator=g))
        return q @ torch.diag(torch.logspace(-1, 1, n, dtype=f64)) @ q.T

    c1, c2 = spd(3), spd(2)
    l1, l2 = torch.linalg.cholesky(c1), torch.linalg.cholesky(c2)
    vals, vecs = torch.linalg.eigh(torch.kron(c1, c2))
    want = vecs @ torch.diag(vals**-0.5) @ vecs.T
    tr = ScaleByPSGDKron()
    w = torch.zeros(3, 2, dtype=f64)
    state = tr.init([w])
    group = {"momentum": 0.0, "precondition_lr": 0.1, "precondition_frequency": 1}
    avg = torch.zeros(6, 6, dtype=f64)
    for t in range(1, 1201):
        h = l1 @ torch.randn(3, 2, dtype=f64, generator=g) @ l2.T
        tr.update([h], state, [w], StepContext(group=group, steps=[t], grads=[h]))
        if t > 400:
            q1, q2 = state["kron_q_left"][0], state["kron_q_right"][0]
            avg += torch.kron(q1.T @ q1, q2.T @ q2) / 800
    assert float((avg - want).norm() / want.norm()) < 0.1
