"""Effective learning rate of normalized weights (van Laarhoven, arXiv:1706.05350)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradkit.diagnostics.effective_lr import (
    EffectiveLRTracker,
    effective_learning_rates,
    effective_lr,
    find_scale_invariant,
    optimizer_kind,
)
from gradkit.errors import UnknownNameError


def _bn_net(seed: int = 0) -> nn.Sequential:
    # BatchNorm's eps breaks exact scale invariance (sqrt(var + eps)); make it negligible
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 8), nn.BatchNorm1d(8, eps=1e-30), nn.ReLU(), nn.Linear(8, 3)
    ).double()


def _data(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(32, 5, generator=gen, dtype=torch.float64), torch.randint(
        0, 3, (32,), generator=gen
    )


def test_find_scale_invariant():
    model = _bn_net()
    x, _ = _data()
    # the weight and bias before BatchNorm (a bias before BN has no effect at all)
    assert find_scale_invariant(model, x) == ["0.weight", "0.bias"]
    assert model.training  # untouched
    with pytest.raises(ValueError, match="scale"):
        find_scale_invariant(model, x, scale=1.0)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_scaled_copy_with_matched_effective_lr_follows_the_same_functions(kind):
    """Train w with lr, and c*w with the lr giving the same effective lr: lr*c^2 (SGD) or
    lr*c (Adam). The two runs compute the same function for 100 steps and c*w stays c times w,
    exactly the statement that lr_eff is the quantity that matters."""
    c = 3.0
    a, b = _bn_net(1), _bn_net(1)
    with torch.no_grad():
        b[0].weight.mul_(c)
    lr = 0.05 if kind == "sgd" else 0.01
    lr_b = lr * c**2 if kind == "sgd" else lr * c

    def make(model, lr_w):
        rest = [p for n, p in model.named_parameters() if n != "0.weight"]
        groups = [{"params": [model[0].weight], "lr": lr_w}, {"params": rest, "lr": lr}]
        if kind == "sgd":
            return torch.optim.SGD(groups, lr=lr, momentum=0.9)
        return torch.optim.Adam(groups, lr=lr, eps=1e-30)

    opt_a, opt_b = make(a, lr), make(b, lr_b)
    track_a = EffectiveLRTracker(a, opt_a, ["0.weight"])
    track_b = EffectiveLRTracker(b, opt_b, ["0.weight"])
    x, y = _data(2)
    for step in range(100):
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        ra, rb = track_a(step), track_b(step)
        assert rb["0.weight"] == pytest.approx(ra["0.weight"], rel=1e-9)
    torch.testing.assert_close(b[0].weight, c * a[0].weight, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(b(x), a(x), rtol=1e-9, atol=1e-10)
    assert len(track_a.history["0.weight"]) == 100
    assert track_a.plot() is not None


def test_effective_lr_values_and_kind():
    w = torch.tensor([3.0, 4.0])
    assert effective_lr(0.5, w, "sgd") == pytest.approx(0.5 / 25)
    assert effective_lr(0.5, w, "adam") == pytest.approx(0.5 / 5)
    model = _bn_net()
    assert optimizer_kind(torch.optim.AdamW(model.parameters())) == "adam"
    assert optimizer_kind(torch.optim.SGD(model.parameters(), lr=0.1)) == "sgd"
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    rates = effective_learning_rates(model, opt, ["0.weight"])
    assert rates["0.weight"] == pytest.approx(0.2 / float(model[0].weight.detach().norm()) ** 2)


def test_errors():
    model = _bn_net()
    opt = torch.optim.SGD(model[3].parameters(), lr=0.1)
    with pytest.raises(ValueError, match="kind"):
        effective_lr(0.1, torch.ones(2), "lion")
    with pytest.raises(ValueError, match="zero norm"):
        effective_lr(0.1, torch.zeros(2))
    with pytest.raises(
        UnknownNameError, match="^unknown parameter 'nope'; known parameters: 0.bias"
    ):
        effective_learning_rates(model, opt, ["nope"])
    with pytest.raises(ValueError, match="not optimized"):
        effective_learning_rates(model, opt, ["0.weight"])
