"""Gradient coherence, GraNd and EL2N against closed forms and explicit loops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradkit.diagnostics.example_scores import el2n_scores, gradient_coherence, grand_scores


def _classifier(seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(6, 4).double()


def _data(n: int = 30, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=gen, dtype=torch.float64), torch.randint(
        0, 4, (n,), generator=gen
    )


def test_grand_and_el2n_of_a_linear_softmax_classifier():
    """For logits W x + b with cross-entropy, grad = (p - e_y) [x, 1]^T, so
    ||grad|| = ||p - e_y|| * sqrt(||x||^2 + 1) = EL2N * sqrt(||x||^2 + 1)."""
    x, y = _data()
    models = [_classifier(0), _classifier(1), _classifier(2)]
    el2n = el2n_scores(models, x, y, batch_size=7)
    grand = grand_scores(models, F.cross_entropy, x, y, batch_size=11)
    scale = (x.pow(2).sum(1) + 1).sqrt()
    expected_grand = torch.zeros(len(x), dtype=torch.float64)
    expected_el2n = torch.zeros(len(x), dtype=torch.float64)
    for m in models:
        with torch.no_grad():
            err = (m(x).softmax(1) - F.one_hot(y, 4)).norm(dim=1)
        expected_el2n += err / 3
        expected_grand += err * scale / 3
    torch.testing.assert_close(el2n, expected_el2n, rtol=1e-6, atol=1e-7)  # EL2N runs in fp32
    torch.testing.assert_close(grand, expected_grand, rtol=1e-10, atol=1e-12)


def test_grand_matches_an_explicit_loop_on_an_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)).double()
    x, y = _data(12)
    grand = grand_scores(model, F.cross_entropy, x, y, batch_size=5)
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
        assert float(grand[i]) == pytest.approx(float(norm), rel=1e-10)


def test_coherence_against_explicit_pairs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)).double()
    x, y = _data(10)
    grads = []
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    g = torch.stack(grads)
    gram = g @ g.T
    alpha = float(gram.mean() / gram.diagonal().mean())  # E_{z,z'}[g.g'] / E_z[g.g]
    res = gradient_coherence(model, F.cross_entropy, [(x[:4], y[:4]), (x[4:], y[4:])])
    assert res.alpha == pytest.approx(alpha, rel=1e-10)
    assert res.num_examples == 10 and res.ratio == pytest.approx(10 * alpha)


def test_coherence_limits():
    """Identical examples: alpha = 1. Linear regression with residuals of opposite sign on the
    same input: gradients cancel, alpha = 0. Orthogonal inputs: alpha = 1/m."""
    model = nn.Linear(4, 1, bias=False).double()
    with torch.no_grad():
        model.weight.zero_()
    x = torch.ones(5, 4, dtype=torch.float64)
    assert gradient_coherence(
        model, F.mse_loss, (x, torch.ones(5, 1, dtype=torch.float64))
    ).alpha == pytest.approx(1.0)
    y = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    assert gradient_coherence(model, F.mse_loss, (x[:2], y)).alpha == pytest.approx(0.0, abs=1e-15)
    eye = torch.eye(4, dtype=torch.float64)
    res = gradient_coherence(model, F.mse_loss, (eye, torch.ones(4, 1, dtype=torch.float64)))
    assert res.alpha == pytest.approx(res.alpha_perp) and res.alpha_perp == 0.25


def test_errors():
    model = _classifier(0)
    x, y = _data(4)
    with pytest.raises(ValueError, match="integer class labels"):
        el2n_scores(model, x, y.double())
    with pytest.raises(ValueError, match="class indices"):
        el2n_scores(model, x, y + 10)
    with pytest.raises(ValueError, match="different lengths"):
        grand_scores(model, F.cross_entropy, x, y[:3])
    with pytest.raises(ValueError, match="non-empty"):
        el2n_scores([], x, y)
    with pytest.raises(ValueError, match="zero"):
        zero = nn.Linear(6, 1, bias=False).double()
        nn.init.zeros_(zero.weight)
        gradient_coherence(zero, F.mse_loss, (x, torch.zeros(4, 1, dtype=torch.float64)))
    with pytest.raises(ValueError, match="logits"):
        el2n_scores(nn.Flatten(0), x, y)
