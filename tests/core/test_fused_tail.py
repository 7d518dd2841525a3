"""The end of a chain is fused by the core: the learning rate adds its step in place, and Adam's
ratio becomes one ``addcdiv_``. The default path then makes torch.optim's foreach passes, and
gives its results bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradkit
from gradkit import ChainOptimizer, chain
from gradkit.transforms import DecoupledWeightDecay, Scale, ScaleByAdam, ScaleByLearningRate

CASES = [
    ("adamw", {"lr": 1e-2, "weight_decay": 0.1}, torch.optim.AdamW),
    ("adam", {"lr": 1e-2, "weight_decay": 0.01}, torch.optim.Adam),
    ("amsgrad", {"lr": 1e-2}, lambda ps, **kw: torch.optim.Adam(ps, amsgrad=True, **kw)),
    ("sgd", {"lr": 0.05, "momentum": 0.9}, torch.optim.SGD),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True}, torch.optim.SGD),
]


def _pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    a = nn.Sequential(nn.Linear(12, 24), nn.Tanh(), nn.Linear(24, 4))
    b = nn.Sequential(nn.Linear(12, 24), nn.Tanh(), nn.Linear(24, 4))
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize(("name", "hp", "torch_cls"), CASES)
def test_default_path_equals_torch_foreach_bit_for_bit(name, hp, torch_cls) -> None:
    ours_model, ref_model = _pair()
    ours = gradkit.create_optimizer(ours_model, name, **hp)
    ref = torch_cls(ref_model.parameters(), foreach=True, **hp)
    g = torch.Generator().manual_seed(1)
    for _ in range(100):
        x, y = torch.randn(16, 12, generator=g), torch.randn(16, 4, generator=g)
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    for p, q in zip(ours_model.parameters(), ref_model.parameters()):
        assert torch.equal(p, q), name


def test_fused_tail_equals_the_unfused_chain_to_rounding() -> None:
    """The same chain ending in ``Scale(1.0)`` (no fused form: the core adds the returned step)
    takes the same steps to float rounding."""
    a, b = _pair()
    fused = chain(ScaleByAdam(), DecoupledWeightDecay(), ScaleByLearningRate())
    unfused = chain(ScaleByAdam(), DecoupledWeightDecay(), ScaleByLearningRate(), Scale(1.0))
    hp = {"lr": 1e-2, "weight_decay": 0.1}
    opt_a = ChainOptimizer(a.parameters(), fused, hp)
    opt_b = ChainOptimizer(b.parameters(), unfused, hp)
    g = torch.Generator().manual_seed(2)
    for _ in range(50):
        x, y = torch.randn(16, 12, generator=g), torch.randn(16, 4, generator=g)
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
