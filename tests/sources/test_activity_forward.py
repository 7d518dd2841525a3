"""Activity-perturbed forward gradients (Ren et al., arXiv 2210.03310): the rule written out,
unbiasedness of the activity guess, and its closed-form variance against weight perturbation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradkit.sources import ActivityPerturbedForwardGradient, ForwardGradient

from .problems import median_of_means_bound

GROUPS = 100  # median-of-means groups: failure probability exp(-100/8) < 4e-6 per coordinate


def _mlp_problem(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3)
    ).double()
    x = torch.randn(7, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (7,))
    return model, nn.functional.cross_entropy, (x, y)


def _true_activity_grads(model, loss_fn, batch):
    """Backprop's dL/dz for every linear layer's output, and the layers' inputs."""
    x, y = batch
    xs, zs, h = [], [], x
    for m in model:
        if isinstance(m, nn.Linear):
            xs.append(h.detach())
            h = m(h)
            h.retain_grad()
            zs.append(h)
        else:
            h = m(h)
    loss_fn(h, y).backward()
    return xs, [z.grad.detach() for z in zs]


@pytest.mark.parametrize("k", [1, 3])
def test_equals_rule_written_out(k: int) -> None:
    """grad W_l = (1/K) sum_k sum_i (dL/dz_i . u_ki) u_ki x_i^T, grad b_l the same without x,
    with dL/dz from backprop and the source's draws (per block, one (K, *z.shape) tensor)."""
    model, loss_fn, batch = _mlp_problem()
    xs, gz = _true_activity_grads(model, loss_fn, batch)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    source = ActivityPerturbedForwardGradient(model, k, generator=torch.Generator().manual_seed(5))
    loss = source.compute(model, loss_fn, batch)
    gen = torch.Generator().manual_seed(5)
    for lin, x, g in zip(linears, xs, gz):
        us = torch.randn((k, *g.shape), generator=gen, dtype=g.dtype)
        guess = sum((g * u).sum(1, keepdim=True) * u for u in us) / k
        torch.testing.assert_close(lin.weight.grad, guess.T @ x, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(lin.bias.grad, guess.sum(0), rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(loss, loss_fn(model(batch[0]), batch[1]).detach())
    assert (source.last_cost.jvp, source.last_cost.forward, source.last_cost.backward) == (
        3 * k,
        1 + 3 * k,
        0,
    )


def test_activity_guess_unbiased() -> None:
    """Mean over 200,000 directions of the guess for the middle layer's dL/dz (2 examples x
    4 units) equals backprop's, per coordinate within 2 sigma / sqrt(m) of a median of means,
    sigma_ij^2 = ||g_i||^2 + g_ij^2 (Isserlis, per example). A correct estimator fails with
    probability <= 8 exp(-100/8) < 3e-5."""
    model, loss_fn, (x, y) = _mlp_problem(1)
    batch = (x[:2], y[:2])
    _, gz = _true_activity_grads(model, loss_fn, batch)
    g = gz[1]
    source = ActivityPerturbedForwardGradient(model, generator=torch.Generator().manual_seed(3))
    est = source.activity_estimates(model, loss_fn, batch, 1, 200_000).reshape(200_000, -1)
    sigma = ((g * g).sum(1, keepdim=True) + g * g).sqrt().reshape(-1)
    m = est.shape[0] // GROUPS
    mom, p_fail = median_of_means_bound(est, GROUPS)
    bound = 2 * sigma / math.sqrt(m)
    assert p_fail < 4e-6
    assert ((mom - g.reshape(-1)).abs() <= bound).all(), (mom, g)
    # the check has power: a 10% scale error is rejected
    assert not ((0.9 * mom - g.reshape(-1)).abs() <= bound).all()
    assert source.cost.jvp == 200_000


def _linear_problem():
    torch.manual_seed(4)
    n_in, m_out, batch = 6, 3, 4
    model = nn.Sequential(nn.Linear(n_in, m_out)).double()
    x = torch.randn(batch, n_in, dtype=torch.float64)
    y = torch.randn(batch, m_out, dtype=torch.float64)
    return model, nn.functional.mse_loss, (x, y)


def test_lower_variance_than_weight_perturbation_on_linear_layer() -> None:
    """On z = W x + b, per-example activity perturbation has total variance
    sum_i (m + 1) ||g_i||^2 (||x_i||^2 + 1); weight perturbation (ForwardGradient over W and b,
    d = m n + m scalars) has (d + 1) ||G||^2. Both closed forms are checked against 20,000
    draws (within 10%), and the ordering is checked in closed form and empirically."""
    model, loss_fn, batch = _linear_problem()
    x, _ = batch
    xs, gz = _true_activity_grads(model, loss_fn, batch)
    g = gz[0]
    xt = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)
    full = g.T @ xt  # (m, n + 1): [grad W | grad b]
    m, d = g.shape[1], full.numel()
    act_closed = ((m + 1) * (g * g).sum(1) * (xt * xt).sum(1)).sum()
    weight_closed = (d + 1) * (full * full).sum()

    n = 20_000
    act = ActivityPerturbedForwardGradient(model, generator=torch.Generator().manual_seed(0))
    guesses = act.activity_estimates(model, loss_fn, batch, 0, n)  # (n, B, m)
    act_est = torch.einsum("kbm,bn->kmn", guesses, xt).reshape(n, -1)
    fwd = ForwardGradient(generator=torch.Generator().manual_seed(0))
    w_est = fwd.estimates(model, loss_fn, batch, n)  # (n, d): weight then bias
    w_full = torch.cat([w_est[:, : d - m].reshape(n, m, -1), w_est[:, d - m :, None]], 2)
    w_est = w_full.reshape(n, -1)
    target = full.reshape(-1)

    act_var = ((act_est - target) ** 2).sum(1).mean()
    weight_var = ((w_est - target) ** 2).sum(1).mean()
    assert abs(act_var / act_closed - 1) < 0.1, (act_var, act_closed)
    assert abs(weight_var / weight_closed - 1) < 0.1, (weight_var, weight_closed)
    assert act_closed < weight_closed and act_var < weight_var
    # both unbiased: their means agree with the gradient (loosely, 3 standard errors in norm)
    assert (act_est.mean(0) - target).norm() < 3 * (act_closed / n).sqrt()
    assert (w_est.mean(0) - target).norm() < 3 * (weight_closed / n).sqrt()


def test_trains_with_optimizer_and_closure() -> None:
    from gradkit.optim import create_optimizer

    model, loss_fn, batch = _mlp_problem(2)
    start = loss_fn(model(batch[0]), batch[1]).item()
    opt = create_optimizer(model.parameters(), "adam", lr=0.02)
    source = ActivityPerturbedForwardGradient(model, 4, generator=torch.Generator().manual_seed(2))
    closure = source.closure(model, loss_fn, batch)
    for _ in range(150):
        opt.step(closure)
    assert loss_fn(model(batch[0]), batch[1]).item() < 0.5 * start
    assert source.cost.calls == 150 and source.cost.jvp == 150 * 3 * 4


def test_accumulate_and_frozen_parameters() -> None:
    model, loss_fn, batch = _mlp_problem()
    model[0].bias.requires_grad_(False)
    source = ActivityPerturbedForwardGradient(model, generator=torch.Generator().manual_seed(1))
    source.compute(model, loss_fn, batch)
    first = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    assert model[0].bias.grad is None
    source.generator.manual_seed(1)
    source.compute(model, loss_fn, batch, accumulate=True)
    for p, f in zip([p for p in model.parameters() if p.requires_grad], first):
        torch.testing.assert_close(p.grad, 2 * f)


def test_invalid_arguments() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="directions"):
        ActivityPerturbedForwardGradient(model, 0)
    with pytest.raises(ValueError, match="nn.Linear"):
        ActivityPerturbedForwardGradient(nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten()))
    with pytest.raises(ValueError, match="model"):
        ActivityPerturbedForwardGradient(nn.Linear(3, 2))
    source = ActivityPerturbedForwardGradient(model)
    batch = (torch.randn(4, 3), torch.randint(0, 2, (4,)))
    with pytest.raises(ValueError, match="another model"):
        source.compute(nn.Sequential(nn.Linear(3, 2)), nn.functional.cross_entropy, batch)
    with pytest.raises(ValueError, match="block"):
        source.activity_estimates(model, nn.functional.cross_entropy, batch, 2, 10)
