"""TrAct: the closed form (the least-squares weights closest to an activation step), the
authors' implementation (torch_tract) over many steps, and the paper's motivating claim
(Petersen, Borgelt & Ermon, arXiv 2410.23970)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import gradkit
from gradkit.optim.tract import TrAct

DT = torch.float64


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT)


def _cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=1, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 3),
    ).to(DT)


def _data(step: int, conv: bool = False, n: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(300 + step)
    shape = (n, 2, 5, 5) if conv else (n, 6)
    return torch.randn(*shape, generator=g, dtype=DT) * 2 + 0.5, torch.randint(
        0, 3, (n,), generator=g
    )


@pytest.mark.parametrize("lam", [0.1, 1e-3, 2.0])
def test_one_step_is_the_least_squares_fit_to_the_activation_step(lam: float) -> None:
    """W* = argmin ||z* - X W^T||^2 + lambda b ||W - W0||^2 with z* = z - eta b dL/dz (the
    per-example gradient step on the activations), solved here by least squares on the stacked
    system; the first layer's SGD step with TrAct must land on it."""
    model = _mlp()
    x, y = _data(0)
    eta, b = 0.3, x.shape[0]
    w0 = model[0].weight.detach().clone()
    z = model[0](x)
    dz = torch.autograd.grad(nn.functional.cross_entropy(model[2](torch.tanh(z)), y), z)[0]
    target = (z - eta * b * dz).detach() - (model[0].bias.detach())  # rows of X W*^T
    lhs = torch.cat([x, (lam * b) ** 0.5 * torch.eye(6, dtype=DT)])
    rhs = torch.cat([target, (lam * b) ** 0.5 * w0.mT])
    w_star = torch.linalg.lstsq(lhs, rhs).solution.mT
    opt = TrAct.from_module(
        model, base="sgd", lr=eta, tract_lambda=lam, momentum=0.0, weight_decay=0.0
    )
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    torch.testing.assert_close(model[0].weight.detach(), w_star, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_trajectory_matches_the_authors_implementation(conv: bool, base: str) -> None:
    """30 steps: torch_tract's TrAct-wrapped first layer under torch.optim.SGD (momentum) or
    AdamW against gradkit's tract on the plain model."""
    torch_tract = pytest.importorskip("torch_tract")
    make = _cnn if conv else _mlp
    ref = make(1)
    ours = copy.deepcopy(ref)
    ref[0] = torch_tract.TrAct(ref[0], l=0.1)
    if base == "sgd":
        hp = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3}
        ref_opt = torch.optim.SGD(ref.parameters(), **hp)
    else:
        hp = {"lr": 3e-3, "weight_decay": 1e-2}
        ref_opt = torch.optim.AdamW(ref.parameters(), **hp)
    opt = gradkit.create_optimizer(ours, "tract", base=base, tract_lambda=0.1, **hp)
    for t in range(30):
        x, y = _data(t, conv)
        for m, o in ((ref, ref_opt), (ours, opt)):
            o.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            o.step()
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-9, atol=1e-10)
    start = make(1)
    moved = max(
        float((p - q).detach().abs().max()) for p, q in zip(ours.parameters(), start.parameters())
    )
    assert moved > 1e-2


def test_activation_change_does_not_depend_on_input_scale() -> None:
    """The paper's motivation: plain SGD changes the first-layer activations in proportion to
    the squared input scale; TrAct (lambda -> 0, more rows than inputs) makes the change that of
    the activation step, whatever the scale (inputs x and 10 x with weights W and W / 10 give
    the same activations and gradients w.r.t. them)."""

    def activation_change(scale: float, name: str, **hp) -> torch.Tensor:
        model = _mlp()
        with torch.no_grad():
            model[0].weight.div_(scale)
        x, y = _data(1, n=20)
        x = x * scale
        opt = gradkit.create_optimizer(model, name, lr=0.1, **hp)
        z0 = model[0](x).detach()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        return model[0](x).detach() - z0

    small = activation_change(1.0, "tract", base="sgd", tract_lambda=1e-9, weight_decay=0.0)
    large = activation_change(10.0, "tract", base="sgd", tract_lambda=1e-9, weight_decay=0.0)
    torch.testing.assert_close(small, large, rtol=1e-5, atol=1e-8)
    plain_small = activation_change(1.0, "sgd")
    plain_large = activation_change(10.0, "sgd")
    ratio = float((plain_large - plain_small).norm() / plain_small.norm())
    assert ratio > 10.0  # plain SGD: the bias part is equal, the weight part grows ~100x


def test_only_the_first_layer_weight_is_changed_and_layer_can_be_chosen() -> None:
    model = _mlp()
    ref = copy.deepcopy(model)
    opt = TrAct.from_module(model, layer=model[2], base="sgd", lr=0.1, weight_decay=0.0)
    sgd = torch.optim.SGD(ref.parameters(), lr=0.1)
    x, y = _data(2)
    for m, o in ((model, opt), (ref, sgd)):
        o.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        o.step()
    torch.testing.assert_close(model[0].weight, ref[0].weight, rtol=0, atol=0)
    torch.testing.assert_close(model[2].bias, ref[2].bias, rtol=0, atol=0)
    assert not torch.allclose(model[2].weight, ref[2].weight)


def test_errors() -> None:
    model = _mlp()
    opt = TrAct.from_module(model)
    x, y = _data(3)
    opt.statistics.remove()
    nn.functional.cross_entropy(model(x), y).backward()
    with pytest.raises(RuntimeError, match="no input statistics"):
        opt.step()
    with pytest.raises(ValueError, match="groups=1"):
        TrAct.from_module(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="nn.Linear or nn.Conv2d"):
        TrAct.from_module(nn.Sequential(nn.LayerNorm(3)))
    with pytest.raises(ValueError, match="Invalid tract_lambda"):
        TrAct.from_module(_mlp(), tract_lambda=0.0)
