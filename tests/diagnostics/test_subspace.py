"""Gradient fraction in the top-k Hessian subspace and subspace overlap: closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diagnostics.linear_problems import linear_regression
from gradkit.diagnostics.subspace import (
    SubspaceTracker,
    gradient_fraction,
    gradient_subspace,
    plot_subspace,
    subspace_overlap,
)
from helpers import single_threaded_tests  # noqa: F401  (autouse: one intra-op thread)


def _quadratic(seed: int = 0, n: int = 50, d: int = 12):
    return linear_regression(seed, n, d, scale=(0.2, 3.0))


def _closed_form(model, x, y, k):
    """H = 2 X^T X / n and g = H w - 2 X^T y / n for MSE on a linear model."""
    n = x.shape[0]
    w = model.weight.detach().reshape(-1)
    hess = 2.0 * x.T @ x / n
    grad = hess @ w - 2.0 * x.T @ y.reshape(-1) / n
    evals, evecs = torch.linalg.eigh(hess)
    top = evecs[:, -k:]
    return float((top.T @ grad).pow(2).sum() / grad.pow(2).sum()), evals.flip(0)[:k], top.T


@pytest.mark.parametrize("k", [1, 3, 6])
def test_fraction_matches_closed_form(k):
    model, x, y = _quadratic()
    frac, evals, basis = _closed_form(model, x, y, k)
    snap = gradient_subspace(model, nn.functional.mse_loss, (x, y), k=k, tol=1e-10)
    assert snap.fraction == pytest.approx(frac, rel=1e-7)
    torch.testing.assert_close(torch.tensor(snap.eigenvalues, dtype=torch.float64), evals)
    assert subspace_overlap(snap.basis, basis) == pytest.approx(1.0, abs=1e-8)
    # all directions: the whole gradient
    full = gradient_subspace(model, nn.functional.mse_loss, (x, y), k=12, tol=1e-10)
    assert full.fraction == pytest.approx(1.0, abs=1e-10)


def test_overlap_closed_form():
    e = torch.eye(10, dtype=torch.float64)
    for theta in [0.0, 0.3, 1.0, math.pi / 2]:
        a = torch.stack([e[0], e[1]])
        b = torch.stack([math.cos(theta) * e[0] + math.sin(theta) * e[2], e[1]])
        assert subspace_overlap(a, b) == pytest.approx((math.cos(theta) ** 2 + 1) / 2, abs=1e-12)
        assert subspace_overlap(b, a) == pytest.approx(subspace_overlap(a, b), abs=1e-12)
    assert subspace_overlap(e[:3], e[3:6]) == pytest.approx(0.0, abs=1e-12)
    # not orthonormal input: the span is what counts
    assert subspace_overlap(torch.stack([e[0] + e[1], e[1]]), e[:2]) == pytest.approx(1.0)
    # list-of-parameter-lists input
    vecs = [[e[0][:4].reshape(2, 2), e[0][4:]], [e[1][:4].reshape(2, 2), e[1][4:]]]
    assert subspace_overlap(vecs, e[:2]) == pytest.approx(1.0)
    g = torch.tensor([3.0, 4.0] + [0.0] * 8, dtype=torch.float64)
    assert gradient_fraction(g, e[:1]) == pytest.approx(9 / 25)


def test_tracker_records_fraction_and_overlap(tmp_path):
    model, x, y = _quadratic(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tracker = SubspaceTracker(model, nn.functional.mse_loss, (x, y), k=2, every=20, tol=1e-10)
    for step in range(101):
        tracker.update(step)
        if tracker.history and tracker.history[-1].step == step:
            frac, _, _ = _closed_form(model, x, y, 2)
            assert tracker.history[-1].fraction == pytest.approx(frac, rel=1e-6)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert [s.step for s in tracker.history] == [0, 20, 40, 60, 80, 100]
    # a quadratic's Hessian does not move: overlap 1 throughout
    for s in tracker.history:
        assert s.overlap_with_reference == pytest.approx(1.0, abs=1e-8)
    assert tracker.history[0].overlap_with_previous is None
    # GD removes the top directions first: the gradient leaves the top subspace
    assert tracker.history[-1].fraction < tracker.history[0].fraction
    assert plot_subspace(tracker.history, tmp_path / "sub.png").stat().st_size > 1000


def test_errors():
    e = torch.eye(5, dtype=torch.float64)
    with pytest.raises(ValueError, match="different spaces"):
        subspace_overlap(e[:2], torch.eye(6)[:2])
    with pytest.raises(ValueError, match="zero"):
        gradient_fraction(torch.zeros(5), e[:1])
    with pytest.raises(ValueError, match="entries per vector"):
        gradient_fraction(torch.ones(4), e[:1])
    model, x, y = _quadratic()
    with pytest.raises(
        ValueError, match=r"^Invalid k: 13; k must be <= the number of parameters \(12\)$"
    ):
        gradient_subspace(model, nn.functional.mse_loss, (x, y), k=13)
    with pytest.raises(ValueError, match="every"):
        SubspaceTracker(model, nn.functional.mse_loss, (x, y), every=0)
