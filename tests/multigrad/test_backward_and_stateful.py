"""The several-gradients path (backward, jacobian, per-example) and the stateful aggregators
(GradNorm against the paper's update written out; Bloop against its rule written out).

Tolerance for the written-out references: 1e-12 relative, float64 throughout; both sides do the
same arithmetic in a different arrangement (flattened vectors vs per-parameter tensors), so
differences are rounding only, and over 60-100 training steps they stay below 1e-12 on these
well-conditioned small problems.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradkit import multigrad
from gradkit.multigrad import Bloop, GradNorm, Mean, PCGrad, Sum, UPGrad


def _model(seed: int = 0) -> tuple[nn.Module, nn.Module, nn.Module]:
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4), nn.Tanh()).double()
    return trunk, nn.Linear(4, 3).double(), nn.Linear(4, 1).double()


def _data(seed: int = 1, n: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    ya = torch.randint(0, 3, (n,), generator=gen)
    yb = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    return x, ya, yb


def _losses(trunk, head_a, head_b, x, ya, yb):  # type: ignore[no-untyped-def]
    h = trunk(x)
    return [nn.functional.cross_entropy(head_a(h), ya), nn.functional.mse_loss(head_b(h), yb)]


def _flat_grad(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(gs, params)]
    )


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-12) -> None:
    err = float((a - b).abs().max())
    assert err <= rel * max(float(b.abs().max()), 1e-300), err


# --- backward -----------------------------------------------------------------------------------


def test_sum_aggregator_equals_backward_of_summed_losses() -> None:
    trunk, ha, hb = _model()
    x, ya, yb = _data()
    heads = [*ha.parameters(), *hb.parameters()]
    info = multigrad.backward(_losses(trunk, ha, hb, x, ya, yb), Sum(), trunk.parameters(), heads)
    mine = [p.grad.clone() for p in [*trunk.parameters(), *heads]]
    for p in [*trunk.parameters(), *heads]:
        p.grad = None
    sum(_losses(trunk, ha, hb, x, ya, yb)).backward()
    for a, p in zip(mine, [*trunk.parameters(), *heads]):
        _close(a, p.grad)
    n_trunk = sum(p.numel() for p in trunk.parameters())
    assert info.num_gradients == 2 and info.jacobian_bytes == 2 * n_trunk * 8


def test_backward_rows_are_the_task_gradients_and_accumulate() -> None:
    trunk, ha, hb = _model()
    x, ya, yb = _data()
    shared = list(trunk.parameters())
    losses = _losses(trunk, ha, hb, x, ya, yb)
    jac = multigrad.jacobian(losses, shared, retain_graph=True)
    for i in range(2):
        _close(torch.cat([j[i].reshape(-1) for j in jac]), _flat_grad(losses[i], shared))
    rows = torch.stack([_flat_grad(loss, shared) for loss in losses])
    agg = UPGrad()
    multigrad.backward(losses, agg, shared)  # task params omitted: only the trunk gets grads
    first = torch.cat([p.grad.reshape(-1) for p in shared])
    expected = agg.last_weights @ rows
    _close(first, expected)
    assert all(p.grad is None for p in [*ha.parameters(), *hb.parameters()])
    multigrad.backward(_losses(trunk, ha, hb, x, ya, yb), agg, shared)
    _close(torch.cat([p.grad.reshape(-1) for p in shared]), 2 * first)  # added, like backward


def test_backward_refuses_bad_input() -> None:
    trunk, ha, hb = _model()
    x, ya, yb = _data()
    losses = _losses(trunk, ha, hb, x, ya, yb)
    with pytest.raises(ValueError, match="max_jacobian_bytes=10"):
        multigrad.backward(losses, Sum(), trunk.parameters(), max_jacobian_bytes=10)
    with pytest.raises(ValueError, match="max_jacobian_bytes"):
        multigrad.backward(losses, Sum(), trunk.parameters(), max_jacobian_bytes=-1)
    with pytest.raises(ValueError, match="both"):
        multigrad.backward(losses, Sum(), trunk.parameters(), trunk.parameters())
    with pytest.raises(ValueError, match="scalar"):
        multigrad.backward([torch.ones(2, requires_grad=True)], Sum(), trunk.parameters())
    with pytest.raises(ValueError, match="at least one loss"):
        multigrad.backward([], Sum(), trunk.parameters())
    with pytest.raises(ValueError, match="shared_params is empty"):
        multigrad.backward(losses, Sum(), [])


def test_per_example_jacobian_with_mean_is_the_batch_gradient() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, ya, _ = _data()
    jac, params = multigrad.per_example_jacobian(model, nn.functional.cross_entropy, x, ya)
    multigrad.aggregate_into_grad(jac, params, Mean())
    mine = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    nn.functional.cross_entropy(model(x), ya).backward()
    for a, p in zip(mine, params):
        _close(a, p.grad)


def test_any_torch_optimizer_steps_on_the_aggregated_gradient() -> None:
    trunk, ha, hb = _model()
    x, ya, yb = _data()
    params = [*trunk.parameters(), *ha.parameters(), *hb.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)
    first = None
    for _ in range(30):
        opt.zero_grad()
        losses = _losses(trunk, ha, hb, x, ya, yb)
        first = first or [float(v.detach()) for v in losses]
        multigrad.backward(losses, PCGrad(seed=0), trunk.parameters(), params[-4:])
        opt.step()
    last = [float(v.detach()) for v in _losses(trunk, ha, hb, x, ya, yb)]
    assert last[0] < first[0] and last[1] < first[1]


# --- GradNorm -----------------------------------------------------------------------------------


def _gradnorm_written_out(steps: int, alpha: float, weight_lr: float, lr: float):  # type: ignore[no-untyped-def]
    """Algorithm 1 of the GradNorm paper, on flattened vectors, independent of gradkit."""
    trunk, ha, hb = _model(3)
    x, ya, yb = _data(4)
    shared = list(trunk.parameters())
    layer = list(trunk[2].parameters())  # W: the last shared layer
    heads = [*ha.parameters(), *hb.parameters()]
    w = torch.ones(2, dtype=torch.float64)
    l0 = None
    history = []
    for _ in range(steps):
        losses = _losses(trunk, ha, hb, x, ya, yb)
        lv = torch.stack([v.detach() for v in losses])
        l0 = lv.clone() if l0 is None else l0
        gw = torch.stack([_flat_grad(v, layer) for v in losses])  # grad of L_i on W
        norms = gw.norm(dim=1)  # ||grad_W L_i||
        g = w * norms  # G_W^(i) = ||grad_W w_i L_i||
        g_bar = g.mean()
        loss_ratio = lv / l0
        r = loss_ratio / loss_ratio.mean()
        target = (g_bar * r**alpha).detach()  # constant
        # L_grad = sum_i |w_i ||grad_W L_i|| - target_i|; d/dw_i = sign(...) ||grad_W L_i||
        grad_w = torch.sign(g - target) * norms
        # network: gradient of sum_i w_i L_i with the current weights
        total = sum(wi * v for wi, v in zip(w, losses))
        grads = torch.autograd.grad(total, shared + heads)
        with torch.no_grad():
            for p, gp in zip(shared + heads, grads):
                p -= lr * gp
        w = w - weight_lr * grad_w
        w = w * 2 / w.sum()
        history.append(w.clone())
    return trunk, ha, hb, history


def test_gradnorm_matches_the_paper_update_written_out() -> None:
    steps, alpha, weight_lr, lr = 100, 1.5, 0.01, 0.1
    ref_trunk, ref_a, ref_b, ref_hist = _gradnorm_written_out(steps, alpha, weight_lr, lr)
    trunk, ha, hb = _model(3)
    x, ya, yb = _data(4)
    params = [*trunk.parameters(), *ha.parameters(), *hb.parameters()]
    opt = torch.optim.SGD(params, lr=lr)
    agg = GradNorm(trunk[2].parameters(), alpha=alpha, weight_lr=weight_lr)
    # GradNorm scales every loss by its weight, task heads included: pass all params as shared
    for step in range(steps):
        opt.zero_grad()
        multigrad.backward(_losses(trunk, ha, hb, x, ya, yb), agg, params)
        opt.step()
        _close(agg.loss_weights, ref_hist[step])
    ref_params = [*ref_trunk.parameters(), *ref_a.parameters(), *ref_b.parameters()]
    for a, b in zip(params, ref_params):
        _close(a.detach(), b.detach())
    # the weights moved: the test would notice a GradNorm that did nothing
    assert float((agg.loss_weights - 1).abs().max()) > 0.05
    assert abs(float(agg.loss_weights.sum()) - 2.0) < 1e-12


def test_gradnorm_state_round_trips_and_refuses_bad_input() -> None:
    trunk, ha, hb = _model()
    x, ya, yb = _data()
    agg = GradNorm(trunk[2].parameters())
    multigrad.backward(_losses(trunk, ha, hb, x, ya, yb), agg, trunk.parameters())
    state = agg.state_dict()
    other = GradNorm(trunk[2].parameters())
    other.load_state_dict(state)
    assert torch.equal(other.loss_weights, agg.loss_weights)
    with pytest.raises(ValueError, match="alpha"):
        GradNorm(trunk[2].parameters(), alpha=-1)
    with pytest.raises(ValueError, match="weight_lr"):
        GradNorm(trunk[2].parameters(), weight_lr=0)
    with pytest.raises(ValueError, match="among"):
        multigrad.backward(_losses(trunk, ha, hb, x, ya, yb), agg, ha.parameters())


# --- Bloop --------------------------------------------------------------------------------------


def test_bloop_matches_its_rule_written_out_over_many_steps() -> None:
    gen = torch.Generator().manual_seed(0)
    beta, lam = 0.9, 0.7
    agg = Bloop(beta=beta, lam=lam, train_index=1)
    m = None
    for _ in range(60):
        j = torch.randn(3, 11, generator=gen, dtype=torch.float64)
        g, a = j[1], j[0] + j[2]
        m = g.clone() if m is None else beta * m + (1 - beta) * g
        expected = g + lam * (a - (a @ m) / (m @ m) * m)
        parts = [j[:, :4], j[:, 4:].reshape(3, 7, 1)]
        out = agg(parts)
        _close(torch.cat([o.reshape(-1) for o in out]), expected)
    state = agg.state_dict()
    restored = Bloop(beta=beta, lam=lam, train_index=1)
    restored.load_state_dict(state)
    j = torch.randn(3, 11, generator=gen, dtype=torch.float64)
    parts = [j[:, :4], j[:, 4:].reshape(3, 7, 1)]
    for x, y in zip(agg(parts), restored(parts)):
        assert torch.equal(x, y)


@pytest.mark.parametrize("seed", range(5))
def test_bloop_with_beta_zero_leaves_the_training_loss_first_order_unchanged(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    j = torch.randn(2, 9, generator=gen, dtype=torch.float64)
    j[1] -= 2 * j[0]  # an auxiliary gradient that conflicts with training
    d = Bloop(beta=0.0, lam=1.0)([j])[0]
    g = j[0]
    assert abs(float((d - g) @ g)) <= 1e-13 * float(g @ g + j[1] @ j[1])
    assert float(d @ g) > 0
    # plain summing would have conflicted with the training gradient
    assert float(j.sum(0) @ g) < 0


def test_bloop_invalid_values() -> None:
    with pytest.raises(ValueError, match="beta"):
        Bloop(beta=1.0)
    with pytest.raises(ValueError, match="lam"):
        Bloop(lam=-1.0)
    with pytest.raises(ValueError, match="train_index"):
        Bloop(train_index=3)([torch.zeros(2, 3)])


def test_bfloat16_parameters_get_bfloat16_grads() -> None:
    torch.manual_seed(0)
    trunk, head_a, head_b = nn.Linear(5, 4).bfloat16(), nn.Linear(4, 3), nn.Linear(4, 1)
    x = torch.randn(8, 5).bfloat16()
    h = trunk(x).float()
    losses = [head_a(h).square().mean(), head_b(h).abs().mean()]
    multigrad.backward(losses, UPGrad(), trunk.parameters(), [*head_a.parameters()])
    assert trunk.weight.grad.dtype == torch.bfloat16
    assert bool(torch.isfinite(trunk.weight.grad.float()).all())
    assert head_b.weight.grad is None  # not in task_params: left alone


def test_gradnorm_balances_the_weighted_gradient_norms() -> None:
    """The paper's aim: w_i ||g_i|| on W proportional to r_i^alpha (alpha = 0: equal norms)."""
    layer = [torch.zeros(3, requires_grad=True)]
    jac = [torch.tensor([[1.0, 0.0, 0.0], [0.0, 4.0, 0.0]], dtype=torch.float64)]  # norms 1, 4
    agg = GradNorm(layer, alpha=0.0, weight_lr=0.002)
    for _ in range(3000):
        agg(jac, losses=torch.tensor([1.0, 1.0]), params=layer)
    _close(agg.loss_weights, torch.tensor([1.6, 0.4], dtype=torch.float64), rel=0.01)
    # alpha = 1 and task 1 training twice as slowly: r = (4/3, 2/3), so w_1 * 1 = 2 * w_2 * 4
    agg = GradNorm(layer, alpha=1.0, weight_lr=0.002)
    agg(jac, losses=torch.tensor([1.0, 1.0]), params=layer)  # L(0)
    for _ in range(3000):
        agg(jac, losses=torch.tensor([1.0, 0.5]), params=layer)
    _close(agg.loss_weights, torch.tensor([16 / 9, 2 / 9], dtype=torch.float64), rel=0.01)


def test_bloop_ema_keeps_the_auxiliary_part_orthogonal_to_the_true_training_gradient() -> None:
    """The paper's point: projecting against a noisy mini-batch gradient leaves a component along
    the true training gradient; projecting against an EMA of it removes most of it."""
    n = 50
    gen = torch.Generator().manual_seed(0)
    g_true = torch.randn(n, generator=gen, dtype=torch.float64)
    a_true = -0.5 * g_true + torch.randn(n, generator=gen, dtype=torch.float64)
    along = {}
    for beta in (0.0, 0.99):
        agg, total = Bloop(beta=beta), 0.0
        for t in range(1500):
            g = g_true + 2 * torch.randn(n, generator=gen, dtype=torch.float64)
            a = a_true + 2 * torch.randn(n, generator=gen, dtype=torch.float64)
            d = agg([torch.stack([g, a])])[0]
            total += float((d - g) @ g_true) if t >= 500 else 0.0
        along[beta] = abs(total / 1000)
    assert along[0.99] < 0.15 * along[0.0]
    assert along[0.0] > 0.5 * abs(float(a_true @ g_true))  # the noisy projection does leave a lot
