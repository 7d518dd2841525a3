"""Sharpness tracker against quadratics with known Hessians and a dense MLP Hessian."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diagnostics.linear_problems import linear_regression
from gradkit.diagnostics.sharpness import SharpnessTracker, plot_sharpness, sharpness
from helpers import single_threaded_tests  # noqa: F401  (autouse: one intra-op thread)


def _linear_regression(seed: int = 0, n: int = 64, d: int = 30):
    """Model w -> X w with MSE: the Hessian is 2 X^T X / n whatever w is."""
    model, x, y = linear_regression(seed, n, d, scale=(0.3, 2.0))
    hess = 2.0 * x.T @ x / n
    return model, x, y, hess


def test_tracker_on_quadratic_matches_closed_form(tmp_path):
    model, x, y, hess = _linear_regression()
    ev = torch.linalg.eigvalsh(hess).flip(0)
    lam = float(ev[0])
    lr = 1.5 / lam  # below the stability edge 2 / lam: GD converges
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    tracker = SharpnessTracker(model, nn.functional.mse_loss, (x, y), every=25, k=2, tol=1e-8)
    losses = []
    for step in range(101):
        tracker.update(step, lr=opt)
        loss = nn.functional.mse_loss(model(x), y)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert [r.step for r in tracker.history] == list(range(0, 101, 25))
    for r in tracker.history:
        assert r.sharpness == pytest.approx(lam, rel=1e-8)
        assert r.eigenvalues[1] == pytest.approx(float(ev[1]), rel=1e-6)
        assert r.threshold == pytest.approx(2.0 / lr)
        assert r.sharpness < r.threshold
    # warm start: later measurements need fewer products than the first
    assert tracker.history[-1].num_matvecs < tracker.history[0].num_matvecs
    assert losses[-1] < losses[0]
    out = plot_sharpness(tracker.history, tmp_path / "sharp.png")
    assert out.exists() and out.stat().st_size > 1000


def test_gd_above_the_edge_diverges_on_quadratic():
    """The 2/lr edge is the right threshold: lr slightly above 2/lambda_max diverges."""
    model, x, y, hess = _linear_regression(1)
    lam = float(sharpness(model, nn.functional.mse_loss, (x, y), tol=1e-10))
    assert lam == pytest.approx(float(torch.linalg.eigvalsh(hess)[-1]), rel=1e-8)
    opt = torch.optim.SGD(model.parameters(), lr=2.2 / lam)
    first = float(nn.functional.mse_loss(model(x), y))
    for _ in range(100):
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) > 100 * first


def test_mlp_sharpness_matches_dense_hessian():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (32,), generator=g)
    loss_fn = nn.functional.cross_entropy
    tracker = SharpnessTracker(model, loss_fn, (x, y), every=5, tol=1e-6)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    names = [n for n, _ in model.named_parameters()]

    def dense_top() -> float:
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

        def f(v):
            d, i = {}, 0
            for n, p in zip(names, model.parameters()):
                d[n] = v[i : i + p.numel()].view_as(p)
                i += p.numel()
            return loss_fn(torch.func.functional_call(model, d, (x,)), y)

        return float(torch.linalg.eigvalsh(torch.func.hessian(f)(flat))[-1])

    for step in range(11):
        rec = tracker.update(step, lr=0.5)
        if rec is not None:
            assert rec.sharpness == pytest.approx(dense_top(), rel=1e-4)
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert len(tracker.history) == 3
    assert model.training  # eval mode during measurement is undone


def test_errors(tmp_path):
    model, x, y, _ = _linear_regression()
    with pytest.raises(ValueError, match="every"):
        SharpnessTracker(model, nn.functional.mse_loss, (x, y), every=0)
    with pytest.raises(ValueError, match="operator"):
        SharpnessTracker(model, nn.functional.mse_loss, (x, y), operator="fisher2")
    tracker = SharpnessTracker(model, nn.functional.mse_loss, (x, y))
    with pytest.raises(ValueError, match=r"^Invalid lr: -1.0; lr must be a finite number > 0$"):
        tracker.update(0, lr=-1.0)
    with pytest.raises(ValueError, match="history is empty"):
        plot_sharpness([], tmp_path / "x.png")
    with pytest.raises(
        ValueError, match=r"^Invalid k: 31; k must be <= the number of parameters \(30\)$"
    ):
        sharpness(model, nn.functional.mse_loss, (x, y), k=31)
    bad = SharpnessTracker(model, lambda o, t: (o - t) ** 2, (x, y))
    with pytest.raises(ValueError, match="scalar"):
        bad.update(0)
