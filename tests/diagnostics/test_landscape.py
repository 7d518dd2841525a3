"""Loss landscapes (Li et al., arXiv:1712.09913) against exact quadratic answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from gradkit.diagnostics.landscape import (
    hessian_directions,
    hessian_landscape_2d,
    loss_slice_1d,
    loss_slice_2d,
    normalize_direction,
    random_direction,
    random_landscape_2d,
)
from gradkit.diagnostics.landscape_plots import plot_contour, plot_slice_1d, plot_surface


def _regression(seed: int = 0, outputs: int = 2):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 6, generator=gen, dtype=torch.float64)
    y = torch.randn(64, outputs, generator=gen, dtype=torch.float64)
    torch.manual_seed(seed)
    model = nn.Linear(6, outputs).double()
    return model, (x, y)


def _dense_grad_hessian(model, data):
    """Gradient and Hessian of the MSE over the flattened parameters (dense, exact)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat0 = torch.cat([p.detach().flatten() for p in model.parameters()])

    def loss_of(flat):
        parts, i = {}, 0
        for n, s in zip(names, shapes):
            parts[n] = flat[i : i + s.numel()].reshape(s)
            i += s.numel()
        return F.mse_loss(functional_call(model, parts, (data[0],)), data[1])

    g = torch.autograd.functional.jacobian(loss_of, flat0)
    h = torch.autograd.functional.hessian(loss_of, flat0)
    return float(loss_of(flat0)), g, h


def _flat(ts):
    return torch.cat([t.flatten() for t in ts])


def test_1d_slice_is_the_exact_quadratic():
    model, data = _regression()
    loss0, g, h = _dense_grad_hessian(model, data)
    d = random_direction(
        model, norm="layer", ignore_1d=False, generator=torch.Generator().manual_seed(1)
    )
    before = [p.detach().clone() for p in model.parameters()]
    s = loss_slice_1d(model, F.mse_loss, data, d, np.linspace(-2, 2, 9))
    dv = _flat(d)
    expected = loss0 + s.alphas * float(g @ dv) + 0.5 * s.alphas**2 * float(dv @ h @ dv)
    np.testing.assert_allclose(s.losses, expected, rtol=1e-10)
    for p, q in zip(model.parameters(), before):  # parameters restored exactly
        assert torch.equal(p, q)


def test_2d_slice_is_the_exact_quadratic():
    model, data = _regression(1)
    loss0, g, h = _dense_grad_hessian(model, data)
    gen = torch.Generator().manual_seed(2)
    d1 = random_direction(model, norm="filter", ignore_1d=False, generator=gen)
    d2 = random_direction(model, norm="filter", ignore_1d=False, generator=gen)
    s = loss_slice_2d(
        model, F.mse_loss, data, d1, d2, np.linspace(-1, 1, 5), np.linspace(-0.5, 1, 4)
    )
    u, v = _flat(d1), _flat(d2)
    for j, b in enumerate(s.betas):
        for i, a in enumerate(s.alphas):
            w = a * u + b * v
            assert s.losses[j, i] == pytest.approx(
                loss0 + float(g @ w) + 0.5 * float(w @ h @ w), rel=1e-10
            )


def test_filter_normalization():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.Flatten(), nn.LazyLinear(4))
    model(torch.randn(2, 3, 6, 6))
    d = random_direction(model, generator=torch.Generator().manual_seed(0))
    params = list(model.parameters())
    conv_w, lin_w = params[0], params[4]
    torch.testing.assert_close(d[0].flatten(1).norm(dim=1), conv_w.detach().flatten(1).norm(dim=1))
    torch.testing.assert_close(d[4].norm(dim=1), lin_w.detach().norm(dim=1))
    for i in (1, 2, 3, 5):  # conv bias, BN weight and bias, linear bias: zero (ignore_1d)
        assert torch.count_nonzero(d[i]) == 0
    # layer normalization: whole-tensor norms match
    d_layer = normalize_direction(
        [torch.randn_like(p) for p in params], params, "layer", ignore_1d=False
    )
    for t, p in zip(d_layer, params):
        assert float(t.norm()) == pytest.approx(float(p.detach().norm()), rel=1e-5)


def test_hessian_axes_at_a_minimum():
    """At the least-squares minimum, the slice along the top eigenvector is lambda_1 a^2 / 2.

    One output: with several, the MSE Hessian repeats each eigenvalue (one copy per output),
    and single-vector Lanczos returns one copy of a repeated eigenvalue only.
    """
    model, (x, y) = _regression(2, outputs=1)
    xa = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    sol = torch.linalg.lstsq(xa, y).solution  # [7, 2]
    with torch.no_grad():
        model.weight.copy_(sol[:6].T)
        model.bias.copy_(sol[6])
    loss0, _, h = _dense_grad_hessian(model, (x, y))
    dense = torch.linalg.eigvalsh(h).flip(0)
    vals, vecs = hessian_directions(model, F.mse_loss, (x, y), k=2)
    np.testing.assert_allclose(vals, dense[:2].numpy(), rtol=1e-4)
    s = loss_slice_1d(model, F.mse_loss, (x, y), vecs[0], np.linspace(-1, 1, 7))
    np.testing.assert_allclose(s.losses, loss0 + 0.5 * vals[0] * s.alphas**2, rtol=1e-6)
    surf, vals2 = hessian_landscape_2d(model, F.mse_loss, (x, y), np.linspace(-1, 1, 3))
    a, b = np.meshgrid(surf.alphas, surf.betas)
    np.testing.assert_allclose(
        surf.losses, loss0 + 0.5 * (vals2[0] * a**2 + vals2[1] * b**2), rtol=1e-6
    )


def test_plots_and_metric(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))

    def acc(o, t):
        return (o.argmax(-1) == t).float().mean()

    surf = random_landscape_2d(model, F.cross_entropy, (x, y), np.linspace(-1, 1, 5), metric_fn=acc)
    assert surf.losses.shape == (5, 5) and surf.metrics is not None
    assert np.all((surf.metrics >= 0) & (surf.metrics <= 1))
    # the centre of the grid is the model itself
    with torch.no_grad():
        centre = float(F.cross_entropy(model(x), y))
    assert surf.losses[2, 2] == pytest.approx(centre, rel=1e-6)
    d = random_direction(model)
    s = loss_slice_1d(model, F.cross_entropy, [(x[:16], y[:16]), (x[16:], y[16:])], d)
    for fig, name in [
        (plot_contour(surf), "c.png"),
        (plot_surface(surf, log=True), "s.png"),
        (plot_slice_1d({"a": s, "b": s}), "1.png"),
    ]:
        fig.savefig(tmp_path / name)
        assert (tmp_path / name).stat().st_size > 1000


def test_errors():
    model, data = _regression()
    with pytest.raises(ValueError, match="norm"):
        random_direction(model, norm="unit")
    with pytest.raises(ValueError, match="shape"):
        loss_slice_1d(model, F.mse_loss, data, [torch.zeros(3), torch.zeros(2)])
    with pytest.raises(ValueError, match="tensors"):
        loss_slice_1d(model, F.mse_loss, data, [torch.zeros(2, 6)])
    with pytest.raises(ValueError, match="alphas"):
        loss_slice_1d(model, F.mse_loss, data, random_direction(model), alphas=[])
    with pytest.raises(ValueError, match="k must"):
        hessian_directions(model, F.mse_loss, data, k=0)
    with pytest.raises(ValueError, match="parameters of the model"):
        random_direction(model, params=[torch.zeros(2)])


def test_slices_in_train_mode_leave_batchnorm_statistics_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    random_landscape_2d(model, F.cross_entropy, (x, y), np.linspace(-1, 1, 3))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
