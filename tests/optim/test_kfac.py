"""K-FAC: the hooks' Kronecker factors against a dense computation from per-example
quantities, the update against the dense Kronecker solve, and trajectories against the rule of
Martens & Grosse (arXiv 1503.05671) written out here step by step."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import gradkit
from gradkit.curvature.per_example import per_example_gradients
from gradkit.optim.kfac import KFAC


@pytest.fixture(autouse=True)
def _float64_by_default():
    """These tests compare to dense float64 answers; the default dtype is restored after each
    (a module-level switch would change it for every test of the session)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def _mlp(seed: int = 0, bias: bool = True) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6, bias=bias), nn.Tanh(), nn.Linear(6, 3, bias=bias))


def _data(step: int, n: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def _vec(x: torch.Tensor) -> torch.Tensor:
    """Column-stacking vec, the convention of vec(W) with F ~ A (x) G."""
    return x.mT.reshape(-1)


def _unvec(v: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    return v.reshape(cols, rows).mT


def _dense_quantities(
    model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, bias: bool = True
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Per layer: the per-example inputs a~_i (bias column appended), the per-example gradients
    g_i = d l_i / d s_i of the layer outputs, and the mean-loss gradient [dW, db]; computed here
    by hand with autograd, without hooks."""
    l1, l2 = model[0], model[2]
    s1 = x @ l1.weight.mT + (l1.bias if bias else 0)
    z = torch.tanh(s1)
    s2 = z @ l2.weight.mT + (l2.bias if bias else 0)
    per_example = nn.functional.cross_entropy(s2, y, reduction="none")
    g1, g2 = torch.autograd.grad(per_example.sum(), (s1, s2), retain_graph=True)
    params = [l1.weight, l2.weight] + ([l1.bias, l2.bias] if bias else [])
    grads = torch.autograd.grad(per_example.mean(), params)
    ones = torch.ones(x.shape[0], 1)
    a = [x.detach(), z.detach()]
    if bias:
        a = [torch.cat([t, ones], 1) for t in a]
        d = [
            torch.cat([grads[0], grads[2][:, None]], 1),
            torch.cat([grads[1], grads[3][:, None]], 1),
        ]
    else:
        d = [grads[0], grads[1]]
    return a, [g1.detach(), g2.detach()], d


def _factors_from(a: list[torch.Tensor], g: list[torch.Tensor]) -> list[tuple]:
    n = a[0].shape[0]
    return [(ai.mT @ ai / n, gi.mT @ gi / n) for ai, gi in zip(a, g)]


# ---------------------------------------------------------------------------- factors
@pytest.mark.parametrize("bias", [True, False])
def test_factors_match_the_dense_per_example_computation(bias: bool) -> None:
    model = _mlp(bias=bias)
    opt = KFAC.from_module(model, precondition_frequency=1, momentum=0.0)
    x, y = _data(0)
    a, g, _ = _dense_quantities(model, x, y, bias)
    want = _factors_from(a, g)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()  # step 1: eps_1 = 0, the factors are this batch's statistics
    for layer, (wa, wg) in zip((model[0], model[2]), want):
        st = opt.state[layer.weight]
        torch.testing.assert_close(st["kfac_a"], wa, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(st["kfac_g"], wg, rtol=1e-12, atol=1e-14)
        if bias:
            assert st["kfac_a"].shape == (layer.in_features + 1,) * 2
            assert opt.state[layer.bias]["kfac_a"].numel() == 0


def test_summed_loss_with_loss_reduction_sum_gives_the_same_factors() -> None:
    """Per-example output gradients do not depend on the reduction once it is declared."""
    x, y = _data(1)
    got = []
    for reduction in ("mean", "sum"):
        model = _mlp()
        opt = KFAC.from_module(model, loss_reduction=reduction, momentum=0.0)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y, reduction=reduction).backward()
        opt.step()
        got.append([opt.state[model[i].weight]["kfac_g"].clone() for i in (0, 2)])
    for m, s in zip(*got):
        torch.testing.assert_close(m, s, rtol=1e-12, atol=1e-14)


def test_two_backward_passes_before_a_step_are_averaged() -> None:
    model = _mlp()
    opt = KFAC.from_module(model, momentum=0.0)
    (x1, y1), (x2, y2) = _data(2), _data(3)
    w1 = _factors_from(*_dense_quantities(model, x1, y1)[:2])
    w2 = _factors_from(*_dense_quantities(model, x2, y2)[:2])
    opt.zero_grad()
    for x, y in ((x1, y1), (x2, y2)):
        nn.functional.cross_entropy(model(x), y).backward()
    with torch.no_grad():  # forward passes without a backward pass do not count
        model(torch.randn(4, 5))
    model(torch.randn(4, 5)).sum()  # (nor with one that never runs backward)
    opt.step()
    for i, layer in enumerate((model[0], model[2])):
        st = opt.state[layer.weight]
        torch.testing.assert_close(st["kfac_a"], (w1[i][0] + w2[i][0]) / 2, rtol=1e-12, atol=0)
        torch.testing.assert_close(st["kfac_g"], (w1[i][1] + w2[i][1]) / 2, rtol=1e-12, atol=0)


def test_one_example_kronecker_product_is_the_exact_empirical_fisher() -> None:
    """With one example the per-example gradient is g a~^T, so A (x) G = vec(D) vec(D)^T exactly
    (the paper's approximation E[aa^T (x) gg^T] ~ E[aa^T] (x) E[gg^T] is exact for one term);
    the per-example gradients here come from the curvature engine (torch.func), not the hooks."""
    torch.manual_seed(4)
    layer = nn.Linear(4, 3)
    plain = copy.deepcopy(layer)
    opt = KFAC.from_module(layer, momentum=0.0)
    x, y = torch.randn(1, 4), torch.randn(1, 3)
    opt.zero_grad()
    nn.functional.mse_loss(layer(x), y).backward()
    opt.step()
    pe = per_example_gradients(plain, nn.functional.mse_loss, x, y)
    d = torch.cat([pe["weight"][0], pe["bias"][0][:, None]], 1)
    fisher = torch.outer(_vec(d), _vec(d))
    st = opt.state[layer.weight]
    torch.testing.assert_close(
        torch.kron(st["kfac_a"], st["kfac_g"]), fisher, rtol=1e-12, atol=1e-14
    )


# ---------------------------------------------------------------------------- dense solve
@pytest.mark.parametrize("split", ["pi", "sqrt"])
def test_single_layer_update_is_the_dense_kronecker_solve(split: str) -> None:
    """One step on one Linear layer: -lr * vec^-1([(A + d_A I) (x) (G + d_G I)]^-1 vec(D)), with
    A, G the empirical factors of the batch (from per-example gradients of the outputs) and
    d_A = pi sqrt(damping), d_G = sqrt(damping) / pi (pi = 1 for "sqrt")."""
    torch.manual_seed(5)
    layer = nn.Linear(5, 3)
    x, y = torch.randn(7, 5), torch.randn(7, 3)
    damping, lr = 0.05, 0.3
    out = layer(x)
    g = torch.autograd.grad(nn.functional.mse_loss(out, y, reduction="none").sum(1).sum(), out)[0]
    a = torch.cat([x, torch.ones(7, 1)], 1)
    big_a, big_g = a.mT @ a / 7, g.mT @ g / 7
    dw, db = torch.autograd.grad(
        nn.functional.mse_loss(out, y, reduction="none").sum(1).mean(), (layer.weight, layer.bias)
    )
    d = torch.cat([dw, db[:, None]], 1)
    pi = math.sqrt((big_a.trace() / 6) / (big_g.trace() / 3)) if split == "pi" else 1.0
    dense = torch.kron(
        big_a + pi * math.sqrt(damping) * torch.eye(6),
        big_g + math.sqrt(damping) / pi * torch.eye(3),
    )
    step = _unvec(torch.linalg.solve(dense, _vec(d)), 3, 6)
    w0, b0 = layer.weight.detach().clone(), layer.bias.detach().clone()
    opt = KFAC.from_module(layer, lr=lr, damping=damping, damping_split=split, momentum=0.0)
    opt.zero_grad()
    nn.functional.mse_loss(layer(x), y, reduction="none").sum(1).mean().backward()
    opt.step()
    torch.testing.assert_close(layer.weight.detach(), w0 - lr * step[:, :5], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.bias.detach(), b0 - lr * step[:, 5], rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------- trajectories
def _reference_run(
    steps: int, hp: dict, split: str, extra_target: torch.Tensor
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The rule written out: factors from hand-made per-example quantities, EMA with
    eps_k = min(1 - 1/k, stat_decay), damped inverses (torch.linalg.inv) on k = 1, 1+f, ...,
    u = G_inv D A_inv, coupled L2, heavy-ball momentum, lr; the extra parameter takes SGD with
    momentum."""
    model = _mlp(seed=1)
    extra = torch.zeros(3)
    w = [model[0].weight, model[2].weight]
    b = [model[0].bias, model[2].bias]
    fac = [[None, None] for _ in range(2)]
    inv = [[None, None] for _ in range(2)]
    mom: dict[int, torch.Tensor] = {}
    for t in range(1, steps + 1):
        x, y = _data(t)
        model.zero_grad()
        extra.requires_grad_(True)
        a, g, _ = _dense_quantities(model, x, y)
        loss = nn.functional.cross_entropy(model(x), y) + (extra - extra_target).pow(2).sum()
        grads = torch.autograd.grad(loss, [*w, *b, extra])
        extra.requires_grad_(False)
        batch = _factors_from(a, g)
        eps = min(1 - 1 / t, hp["stat_decay"])
        updates = []
        with torch.no_grad():
            for i in range(2):
                for j in range(2):
                    new = batch[i][j]
                    fac[i][j] = new.clone() if t == 1 else eps * fac[i][j] + (1 - eps) * new
                if (t - 1) % hp["precondition_frequency"] == 0:
                    fa, fg = fac[i]
                    pi = math.sqrt((fa.trace() / fa.shape[0]) / (fg.trace() / fg.shape[0]))
                    pi = pi if split == "pi" else 1.0
                    r = math.sqrt(hp["damping"])
                    inv[i] = [
                        torch.linalg.inv(fa + pi * r * torch.eye(fa.shape[0])),
                        torch.linalg.inv(fg + r / pi * torch.eye(fg.shape[0])),
                    ]
                gw = grads[i] + hp["weight_decay"] * w[i]
                gb = grads[2 + i] + hp["weight_decay"] * b[i]
                d = inv[i][1] @ torch.cat([gw, gb[:, None]], 1) @ inv[i][0]
                updates += [(w[i], d[:, :-1]), (b[i], d[:, -1])]
            updates.append((extra, grads[4] + hp["weight_decay"] * extra))
            for k, (p, u) in enumerate(updates):
                mom[k] = u.clone() if t == 1 else hp["momentum"] * mom[k] + u
                p.sub_(hp["lr"] * mom[k])
    return [p.detach() for p in model.parameters()], extra


@pytest.mark.parametrize("split", ["pi", "sqrt"])
def test_trajectory_matches_the_rule_written_out(split: str) -> None:
    hp = {
        "lr": 0.05,
        "damping": 0.01,
        "stat_decay": 0.9,
        "precondition_frequency": 3,
        "momentum": 0.8,
        "weight_decay": 1e-3,
    }
    steps = 25
    target = torch.tensor([1.0, -2.0, 0.5])
    want, want_extra = _reference_run(steps, hp, split, target)
    model = _mlp(seed=1)
    holder = nn.Module()
    holder.net = model
    holder.extra = nn.Parameter(torch.zeros(3))  # not a Linear: the SGD-momentum fallback
    opt = gradkit.create_optimizer(holder, "kfac", damping_split=split, **hp)
    for t in range(1, steps + 1):
        x, y = _data(t)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y) + (holder.extra - target).pow(2).sum()
        loss.backward()
        opt.step()
    for p, q in zip(model.parameters(), want):
        torch.testing.assert_close(p.detach(), q, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(holder.extra.detach(), want_extra, rtol=1e-9, atol=1e-11)
    moved = max(
        float((p.detach() - q.detach()).abs().max())
        for p, q in zip(model.parameters(), _mlp(1).parameters())
    )
    assert moved > 1e-2  # the run went somewhere


def test_kfac_beats_tuned_sgd_on_ill_conditioned_softmax_regression() -> None:
    """A behaviour check: on softmax regression with feature scales spanning 1..100, K-FAC at
    the natural-gradient step (lr = 1) ends lower than SGD with momentum at the best of a grid of
    learning rates (measured: 0.37 against 0.85; the assertion leaves a margin)."""
    torch.manual_seed(6)
    scales = torch.logspace(0, 2, 8)
    x = torch.randn(256, 8) * scales
    y = (x / scales @ torch.randn(8, 3) * 3).argmax(1)

    def run(name: str, **hp) -> float:
        torch.manual_seed(7)
        model = nn.Linear(8, 3)
        opt = gradkit.create_optimizer(model, name, **hp)
        for _ in range(50):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        return float(loss.detach())

    kfac = run("kfac", lr=1.0, momentum=0.0, damping=1e-3, precondition_frequency=1)
    smoothness = float((x * x).sum(1).mean())
    sgd = min(run("sgd", lr=f / smoothness, momentum=0.9) for f in (1, 3, 10, 30, 100))
    assert kfac < 0.6 * sgd


# ---------------------------------------------------------------------------- API
def test_weight_and_bias_in_different_groups_is_a_clear_error() -> None:
    model = _mlp()
    opt = KFAC(
        [{"params": [model[0].weight, model[2].weight]}, {"params": [model[0].bias, model[2].bias]}]
    )
    opt.register(model)
    x, y = _data(0)
    nn.functional.cross_entropy(model(x), y).backward()
    with pytest.raises(ValueError, match="same param group"):
        opt.step()


def test_without_a_model_every_parameter_takes_sgd_with_momentum() -> None:
    model = _mlp()
    ref = copy.deepcopy(model)
    opt = gradkit.create_optimizer(list(model.parameters()), "kfac", lr=0.1, momentum=0.9)
    sgd = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for t in range(5):
        x, y = _data(t)
        for m, o in ((model, opt), (ref, sgd)):
            o.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            o.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_missing_statistics_and_hook_removal() -> None:
    model = _mlp()
    opt = KFAC.from_module(model)
    x, y = _data(0)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad()
    opt.statistics.remove()
    nn.functional.cross_entropy(model(x), y).backward()
    with pytest.raises(RuntimeError, match="no statistics"):
        opt.step()
    assert not any(m._forward_hooks for m in model.modules())


def test_invalid_options_are_refused() -> None:
    with pytest.raises(ValueError, match="Invalid damping_split"):
        KFAC.from_module(_mlp(), damping_split="none")
    with pytest.raises(ValueError, match="Invalid damping"):
        KFAC.from_module(_mlp(), damping=0.0)
    with pytest.raises(ValueError, match="Invalid loss_reduction"):
        KFAC.from_module(_mlp(), loss_reduction="max")


# ---------------------------------------------------------------------------- Conv2d (KFC)
def _cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 3 * 3, 4)
    )


def _images(step: int, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(500 + step)
    return torch.randn(n, 2, 5, 5, generator=g), torch.randint(0, 4, (n,), generator=g)


def _loop_patches(x: torch.Tensor, k: int, stride: int, pad: int) -> torch.Tensor:
    """Rows [patch, 1] by explicit loops (no unfold): (N * H_out * W_out, C k k + 1)."""
    xp = nn.functional.pad(x, (pad, pad, pad, pad))
    n, _, h, w = xp.shape
    rows = []
    for i in range(n):
        for r in range(0, h - k + 1, stride):
            for c in range(0, w - k + 1, stride):
                rows.append(torch.cat([xp[i, :, r : r + k, c : c + k].reshape(-1), torch.ones(1)]))
    return torch.stack(rows)


def _cnn_quantities(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> tuple:
    """Conv layer: KFC's A = mean over patches of a~ a~^T, G = (1/N) sum over examples and
    positions of g g^T (g: per-example output gradients); Linear layer as before."""
    conv, lin = model[0], model[3]
    s1 = conv(x)
    z = torch.tanh(s1).flatten(1)
    s2 = lin(z)
    per_example = nn.functional.cross_entropy(s2, y, reduction="none")
    g1, g2 = torch.autograd.grad(per_example.sum(), (s1, s2))
    n = x.shape[0]
    a1 = _loop_patches(x, 3, 2, 1)
    d1 = g1.permute(0, 2, 3, 1).reshape(-1, 3)
    a2 = torch.cat([z.detach(), torch.ones(n, 1)], 1)
    return [(a1.mT @ a1 / a1.shape[0], d1.mT @ d1 / n), (a2.mT @ a2 / n, g2.mT @ g2 / n)]


def test_conv_factors_match_kfc_from_explicit_patches() -> None:
    model = _cnn()
    opt = KFAC.from_module(model, momentum=0.0)
    x, y = _images(0)
    want = _cnn_quantities(copy.deepcopy(model), x, y)  # (the copy's hooks feed the copy)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    for layer, (wa, wg) in zip((model[0], model[3]), want):
        st = opt.state[layer.weight]
        torch.testing.assert_close(st["kfac_a"], wa, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(st["kfac_g"], wg, rtol=1e-12, atol=1e-14)


def test_conv_with_one_position_and_one_example_is_the_exact_empirical_fisher() -> None:
    """One example and one output position (kernel = input size): KFC's Omega (x) Gamma is the
    empirical Fisher vec(D) vec(D)^T of the per-example gradient (curvature engine)."""
    torch.manual_seed(8)
    conv = nn.Conv2d(2, 3, 3)
    plain = copy.deepcopy(conv)
    opt = KFAC.from_module(conv, momentum=0.0)
    x, y = torch.randn(1, 2, 3, 3), torch.randn(1, 3, 1, 1)
    opt.zero_grad()
    nn.functional.mse_loss(conv(x), y).backward()
    opt.step()
    pe = per_example_gradients(plain, nn.functional.mse_loss, x, y)
    d = torch.cat([pe["weight"][0].reshape(3, -1), pe["bias"][0][:, None]], 1)
    st = opt.state[conv.weight]
    fisher = torch.outer(_vec(d), _vec(d))
    torch.testing.assert_close(
        torch.kron(st["kfac_a"], st["kfac_g"]), fisher, rtol=1e-12, atol=1e-14
    )


def test_conv_trajectory_matches_the_rule_written_out() -> None:
    """15 steps of a CNN (Conv2d stride 2 padding 1, then Linear) against the rule written out
    with the loop-made patches (sqrt split, f = 2, momentum)."""
    hp = {
        "lr": 0.05,
        "damping": 0.02,
        "stat_decay": 0.8,
        "precondition_frequency": 2,
        "momentum": 0.5,
    }
    ref = _cnn(2)
    layers = [ref[0], ref[3]]
    fac: list = [None, None]
    inv: list = [None, None]
    mom: dict = {}
    for t in range(1, 16):
        x, y = _images(t)
        batch = _cnn_quantities(ref, x, y)
        grads = torch.autograd.grad(nn.functional.cross_entropy(ref(x), y), list(ref.parameters()))
        eps = min(1 - 1 / t, hp["stat_decay"])
        with torch.no_grad():
            for i, layer in enumerate(layers):
                fac[i] = (
                    batch[i]
                    if t == 1
                    else tuple(eps * f + (1 - eps) * b for f, b in zip(fac[i], batch[i]))
                )
                if (t - 1) % 2 == 0:
                    r = math.sqrt(hp["damping"])
                    inv[i] = [torch.linalg.inv(f + r * torch.eye(f.shape[0])) for f in fac[i]]
                gw, gb = grads[2 * i], grads[2 * i + 1]
                d = inv[i][1] @ torch.cat([gw.reshape(gw.shape[0], -1), gb[:, None]], 1) @ inv[i][0]
                for k, (p, u) in enumerate(
                    ((layer.weight, d[:, :-1].reshape(gw.shape)), (layer.bias, d[:, -1]))
                ):
                    key = 2 * i + k
                    mom[key] = u.clone() if t == 1 else hp["momentum"] * mom[key] + u
                    p.sub_(hp["lr"] * mom[key])
    model = _cnn(2)
    opt = gradkit.create_optimizer(model, "kfac", damping_split="sqrt", **hp)
    for t in range(1, 16):
        x, y = _images(t)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-9, atol=1e-11)
    assert not torch.allclose(model[0].weight, _cnn(2)[0].weight, atol=1e-2)


def test_grouped_conv_takes_the_fallback() -> None:
    model = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten(), nn.Linear(4 * 3 * 3, 2))
    opt = KFAC.from_module(model)
    assert [type(m) for m in opt.statistics.layers] == [nn.Linear]
    assert opt.state_dict()["state"] == {}


def test_a_frozen_weight_leaves_its_trainable_bias_to_the_fallback() -> None:
    model = _mlp()
    model[0].weight.requires_grad_(False)
    ref = copy.deepcopy(model)
    opt = KFAC.from_module(model, lr=0.1, momentum=0.0)
    assert opt.statistics.layers == [model[2]]
    x, y = _data(4)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    grad = torch.autograd.grad(nn.functional.cross_entropy(ref(x), y), ref[0].bias)[0]
    torch.testing.assert_close(model[0].bias.detach(), ref[0].bias.detach() - 0.1 * grad)
