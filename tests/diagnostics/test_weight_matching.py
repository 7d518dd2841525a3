"""Weight matching (Git Re-Basin, arXiv:2209.04836) and the barrier it removes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradkit.bench.tasks.builtin.mnist1d import mnist1d_mlp
from gradkit.diagnostics.connectivity import linear_interpolation
from gradkit.diagnostics.weight_matching import (
    PermutationSpec,
    align,
    apply_permutation,
    permutation_spec,
    random_permutation,
    weight_matching,
)


def _mlp(seed: int, hidden: int = 32) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(10, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.LayerNorm(hidden),
        nn.GELU(),
        nn.Linear(hidden, 3),
    ).double()


def _cnn(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv1d(1, 8, 3, padding=1),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Sequential(nn.Conv1d(8, 6, 3, stride=2), nn.ReLU(), nn.MaxPool1d(2)),
        nn.Flatten(),
        nn.Linear(6 * 4, 16),
        nn.Tanh(),
        nn.Linear(16, 5),
    ).double()


def _randomize_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_permutation_is_pure_and_keeps_the_function(kind):
    model = _mlp(0) if kind == "mlp" else _cnn(0)
    _randomize_bn(model)
    model.eval()
    shape = (7, 10) if kind == "mlp" else (7, 1, 20)
    x = torch.randn(shape, dtype=torch.float64)
    perms = random_permutation(model, seed=3)
    permuted = apply_permutation(model, perms).eval()
    # the same function (float64: only summation order changes)
    torch.testing.assert_close(permuted(x), model(x), rtol=1e-12, atol=1e-12)
    # a pure permutation: every tensor holds exactly the same multiset of values
    changed = 0
    for k, v in model.state_dict().items():
        w = permuted.state_dict()[k]
        assert torch.equal(torch.sort(w.flatten()).values, torch.sort(v.flatten()).values), k
        changed += int(not torch.equal(w, v))
    assert changed >= 4  # and it did move hidden units


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_matching_recovers_a_hidden_permutation(kind):
    """B = a permuted copy of A: weight matching must undo the permutation exactly."""
    model = _mlp(1) if kind == "mlp" else _cnn(1)
    _randomize_bn(model)
    perms = random_permutation(model, seed=5)
    shuffled = apply_permutation(model, perms)
    aligned, found = align(model, shuffled)
    for k, v in model.state_dict().items():
        assert torch.equal(aligned.state_dict()[k], v), k
    for p, idx in perms.items():
        # found[p] undoes perms[p]: idx[found[p]] is the identity
        assert torch.equal(idx[found[p]], torch.arange(len(idx)))


def test_spec_layout_of_cnn():
    spec = permutation_spec(_cnn(0))
    assert spec.sizes == {"P_0": 8, "P_3.0": 6, "P_5": 16}
    assert spec.axes["5.weight"] == ("P_5", "P_3.0", None)
    assert spec.views["5.weight"] == (16, 6, 4)
    assert spec.axes["7.weight"] == (None, "P_5")
    assert spec.axes["1.running_var"] == ("P_0",)


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return x + self.fc(x)


def test_unsupported_models_raise():
    with pytest.raises(NotImplementedError, match="nn.Sequential"):
        permutation_spec(_Residual())
    with pytest.raises(NotImplementedError, match="_Residual"):
        permutation_spec(nn.Sequential(nn.Linear(4, 4), _Residual(), nn.Linear(4, 2)))
    with pytest.raises(NotImplementedError, match="grouped"):
        permutation_spec(nn.Sequential(nn.Conv1d(4, 4, 3, groups=2), nn.Conv1d(4, 2, 1)))
    with pytest.raises(ValueError, match="two weight layers"):
        permutation_spec(nn.Sequential(nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="not a permutation"):
        model = _mlp(0)
        perms = random_permutation(model)
        perms["P_0"] = torch.zeros(32, dtype=torch.long)
        apply_permutation(model, perms)
    with pytest.raises(ValueError, match="max_iter"):
        weight_matching(_mlp(0), _mlp(1), max_iter=0)


def test_hand_written_spec():
    """A PermutationSpec written by hand drives matching of a non-Sequential model."""

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 6)
            self.b = nn.Linear(6, 2)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    spec = PermutationSpec(
        sizes={"h": 6}, axes={"a.weight": ("h", None), "a.bias": ("h",), "b.weight": (None, "h")}
    )
    spec.axes["b.bias"] = (None,)
    torch.manual_seed(0)
    m = Two()
    perms = random_permutation(m, spec, seed=1)
    shuffled = apply_permutation(m, perms, spec)
    x = torch.randn(5, 3)
    torch.testing.assert_close(shuffled(x), m(x))
    aligned, _ = align(m, shuffled, spec)
    torch.testing.assert_close(aligned.a.weight, m.a.weight, rtol=0, atol=0)


def _train_mnist1d_mlp(x, y, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = mnist1d_mlp(hidden=64)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(12):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 100):
            b = order[i : i + 100]
            opt.zero_grad()
            F.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
    return model


def test_alignment_lowers_the_barrier_on_mnist1d():
    """Two MNIST-1D MLPs from different seeds: the barrier drops after weight matching."""
    from gradkit.data import load_mnist1d

    x, y, _, _ = load_mnist1d()
    x, y = x[:2000], y[:2000]
    a = _train_mnist1d_mlp(x, y, seed=0)
    b = _train_mnist1d_mlp(x, y, seed=1)
    naive = linear_interpolation(a, b, F.cross_entropy, (x, y))
    b_aligned, _ = align(a, b)
    aligned = linear_interpolation(a, b_aligned, F.cross_entropy, (x, y))
    # end points are the same function, so the same losses
    assert aligned.losses[-1] == pytest.approx(naive.losses[-1], rel=1e-5)
    assert naive.barrier > 0.3
    assert aligned.barrier < 0.5 * naive.barrier
