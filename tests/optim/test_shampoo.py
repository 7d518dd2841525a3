"""Shampoo against pytorch-optimizer's Shampoo (the paper's Algorithm 1), against the rule
written out step by step (amortised roots, grafting, momentum), and against the dense
Kronecker-product preconditioner.

Tolerances: float64 throughout. pytorch-optimizer computes the inverse roots by SVD, gradkit by
``eigh``: the same matrices to rounding (measured: 5e-15 after 40 steps), so atol 1e-10. The
written-out rule uses dense ``eigh`` on the same factors: atol 1e-10 too. Any error in the
exponent, the damping, the refresh steps or the graft moves parameters by more than 1e-4.
"""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_optimizer import Shampoo as ReferenceShampoo

import gradkit
from gradkit.core.transform import StepContext
from gradkit.optim.shampoo import Shampoo
from gradkit.transforms.preconditioning import ShampooPreconditioner

from .trajectory_checks import assert_moves, assert_trajectories_close, run_manual, run_torch

LR = 1e-2


def _paper(eps: float, freq: int = 1):
    """Algorithm 1: sums, no graft, no momentum, every tensor (vectors too) preconditioned."""
    return lambda ps: Shampoo(
        ps, lr=LR, graft="none", momentum=0.0, dampening=0.0, shampoo_beta=1.0,
        matrix_eps=eps, precondition_frequency=freq, precondition_1d=True,
    )  # fmt: skip


@pytest.mark.parametrize("problem", ["mlp", "quadratic"])
@pytest.mark.parametrize("eps", [1e-6, 1e-3])
def test_paper_rule_matches_pytorch_optimizer(problem: str, eps: float) -> None:
    got = run_torch(_paper(eps), steps=40, problem=problem)
    want = run_torch(
        lambda ps: ReferenceShampoo(ps, lr=LR, matrix_eps=eps, preconditioning_compute_steps=1),
        steps=40,
        problem=problem,
    )
    assert_moves(got, problem)
    assert_trajectories_close(got, want, rtol=0, atol=1e-10)


def _inv_root(f: torch.Tensor, p: int, eps: float) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(f)
    return vecs @ torch.diag((vals.clamp_min(0) + eps) ** (-1.0 / p)) @ vecs.T


def written_out(freq, beta, eps, mu, damp, wd, graft_b2, graft_eps, lr=LR):
    """Shampoo + Adam grafting + momentum + decoupled decay, one parameter at a time."""

    def step(ps, gs, st):
        t = st["t"] = st.get("t", 0) + 1
        out = []
        for i, (p, g) in enumerate(zip(ps, gs)):
            s = st.setdefault(i, {})
            if g.dim() >= 2:
                g2 = g.reshape(g.shape[0], -1)
                lf = s.get("L", torch.zeros(g2.shape[0], g2.shape[0], dtype=g.dtype))
                rf = s.get("R", torch.zeros(g2.shape[1], g2.shape[1], dtype=g.dtype))
                s["L"] = beta * lf + (1 - beta) * g2 @ g2.T if beta < 1 else lf + g2 @ g2.T
                s["R"] = beta * rf + (1 - beta) * g2.T @ g2 if beta < 1 else rf + g2.T @ g2
                if (t - 1) % freq == 0:
                    s["IL"], s["IR"] = _inv_root(s["L"], 4, eps), _inv_root(s["R"], 4, eps)
                d = (s["IL"] @ g2 @ s["IR"]).reshape(g.shape)
            else:  # the diagonal fallback
                v = s.get("v", torch.zeros_like(g))
                s["v"] = beta * v + (1 - beta) * g * g if beta < 1 else v + g * g
                d = g / (s["v"] + eps).sqrt()
            a = s.get("a", torch.zeros_like(g))
            s["a"] = graft_b2 * a + (1 - graft_b2) * g * g
            adam = g / ((s["a"] / (1 - graft_b2**t)).sqrt() + graft_eps)
            d = d * adam.norm() / d.norm()
            s["b"] = d if t == 1 else mu * s["b"] + (1 - damp) * d
            out.append(p * (1 - lr * wd) - lr * s["b"])
        return out

    return step


@pytest.mark.parametrize("problem", ["mlp", "quadratic"])
@pytest.mark.parametrize(("freq", "beta"), [(1, 1.0), (4, 0.99), (7, 1.0)])
def test_grafted_amortised_rule_matches_written_out(problem: str, freq: int, beta: float) -> None:
    hp = {"freq": freq, "beta": beta, "eps": 1e-4, "mu": 0.9, "damp": 0.5, "wd": 0.1,
          "graft_b2": 0.99, "graft_eps": 1e-8}  # fmt: skip

    def ours(ps):
        return Shampoo(
            ps, lr=LR, precondition_frequency=freq, shampoo_beta=beta, matrix_eps=hp["eps"],
            momentum=hp["mu"], dampening=hp["damp"], weight_decay=hp["wd"],
            graft_beta2=hp["graft_b2"], graft_eps=hp["graft_eps"],
        )  # fmt: skip

    got = run_torch(ours, steps=40, problem=problem)
    want = run_manual(written_out(**hp), steps=40, problem=problem)
    assert_moves(got, problem)
    assert_trajectories_close(got, want, rtol=0, atol=1e-10)


def test_kronecker_root_equals_the_dense_inverse_root() -> None:
    """``L^(-1/4) G R^(-1/4)`` is ``(L kron R)^(-1/4) vec(G)`` (row-major vec), damping included:
    the dense 24x24 preconditioner, rooted by its own eigendecomposition."""
    torch.manual_seed(0)
    m, n, eps = 4, 6, 1e-3
    tr = ShampooPreconditioner()
    w = torch.zeros(m, n, dtype=torch.float64)
    state = tr.init([w])
    group = {"shampoo_beta": 1.0, "matrix_eps": eps, "precondition_frequency": 1}
    grads = [torch.randn(m, n, dtype=torch.float64) for _ in range(3)]
    for t, g in enumerate(grads, start=1):
        out = tr.update([g], state, [w], StepContext(group=group, steps=[t], grads=[g]))[0]
    left = sum(g @ g.T for g in grads) + eps * torch.eye(m, dtype=torch.float64)
    right = sum(g.T @ g for g in grads) + eps * torch.eye(n, dtype=torch.float64)
    dense = torch.kron(left, right)
    vals, vecs = torch.linalg.eigh(dense)
    want = vecs @ torch.diag(vals ** (-0.25)) @ vecs.T @ grads[-1].reshape(-1)
    torch.testing.assert_close(out.reshape(-1), want, rtol=1e-10, atol=1e-12)


def test_roots_are_reused_between_refreshes() -> None:
    w = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    opt = Shampoo([w], precondition_frequency=3)
    roots = []
    for _ in range(5):
        w.grad = torch.randn(3, 4, dtype=torch.float64)
        opt.step()
        roots.append(opt.state[w]["inv_root_left"].clone())
    assert torch.equal(roots[0], roots[1]) and torch.equal(roots[1], roots[2])
    assert not torch.equal(roots[2], roots[3])  # refreshed on step 4 = 1 + 3
    assert torch.equal(roots[3], roots[4])


def test_frequency_is_a_live_group_hyperparameter() -> None:
    a = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    opt = Shampoo([{"params": [a], "precondition_frequency": 1}, {"params": [b]}])
    assert opt.param_groups[1]["precondition_frequency"] == 10
    seen = []
    for _ in range(3):
        a.grad = torch.randn(3, 4, dtype=torch.float64)
        b.grad = a.grad.clone()
        opt.step()
        seen.append((opt.state[a]["inv_root_left"].clone(), opt.state[b]["inv_root_left"].clone()))
    assert not torch.equal(seen[1][0], seen[2][0]) and torch.equal(seen[1][1], seen[2][1])


@pytest.mark.parametrize("graft", ["sgd", "adagrad"])
def test_graft_norms(graft: str) -> None:
    """Each parameter's step has the norm of the grafted rule's step (momentum off)."""
    torch.manual_seed(1)
    w = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
    opt = Shampoo([w, b], lr=1.0, graft=graft, momentum=0.0, dampening=0.0)
    acc = [torch.zeros(4, 3, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)]
    for _ in range(3):
        grads = [torch.randn(4, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)]
        before = [w.detach().clone(), b.detach().clone()]
        w.grad, b.grad = grads
        opt.step()
        for k, (p, g, q) in enumerate(zip([w, b], grads, before)):
            if graft == "sgd":
                want = g.norm()
            else:
                acc[k] += g * g
                want = (g / (acc[k].sqrt() + 1e-8)).norm()
            assert math.isclose(float((p.detach() - q).norm()), float(want), rel_tol=1e-10)


def test_bf16_statistics_in_float32_and_complex_refused() -> None:
    w = torch.nn.Parameter(torch.randn(5, 4).bfloat16())
    opt = gradkit.create_optimizer([w], "shampoo", precondition_frequency=1)
    for _ in range(2):
        w.grad = torch.randn(5, 4).bfloat16()
        opt.step()
    assert opt.state[w]["factor_left"].dtype == torch.float32 and w.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="complex"):
        Shampoo([torch.nn.Parameter(torch.randn(3, 3, dtype=torch.complex64))])


def test_graft_none_refuses_graft_settings() -> None:
    with pytest.raises(TypeError, match="graft_beta2"):
        Shampoo([torch.nn.Parameter(torch.randn(3, 3))], graft="none", graft_beta2=0.9)
