"""The gradient-source interface: cost accounting, closures for torch optimizers, accumulation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradkit.sources import Backprop, Cost, DirectFeedbackAlignment, ForwardGradient, ZerothOrder


def test_cost_addition() -> None:
    total = Cost(1, 2, 3, 1, None) + Cost(4, 5, 6, 1, 100) + Cost(0, 0, 0, 1, 50)
    assert total == Cost(5, 7, 9, 3, 100)


def test_lbfgs_closure_with_backprop_source() -> None:
    """torch.optim.LBFGS calls the closure many times per step; the source counts each call."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1).double()
    x = torch.randn(32, 4, dtype=torch.float64)
    y = x @ torch.randn(4, 1, dtype=torch.float64) + 0.5
    source = Backprop()
    opt = torch.optim.LBFGS(model.parameters(), max_iter=50, line_search_fn="strong_wolfe")
    opt.step(source.closure(model, nn.functional.mse_loss, (x, y)))
    assert nn.functional.mse_loss(model(x), y).item() < 1e-8
    assert source.cost.calls > 2
    assert source.cost.forward == source.cost.backward == source.cost.calls


@pytest.mark.parametrize(
    "make",
    [
        lambda m: Backprop(),
        lambda m: ForwardGradient(2, generator=torch.Generator().manual_seed(0)),
        lambda m: ZerothOrder(1e-3, 2, generator=torch.Generator().manual_seed(0)),
        lambda m: DirectFeedbackAlignment(m, generator=torch.Generator().manual_seed(0)),
    ],
)
def test_accumulate_adds_and_frozen_parameters_are_left_alone(make) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    model[0].bias.requires_grad_(False)
    batch = (torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,)))
    loss_fn = nn.functional.cross_entropy
    source = make(model)
    source.compute(model, loss_fn, batch)
    first = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    assert model[0].bias.grad is None
    if isinstance(source, (ForwardGradient, ZerothOrder)):  # same draws again
        source.generator.manual_seed(0)
    source.compute(model, loss_fn, batch, accumulate=True)
    for p, g in zip([p for p in model.parameters() if p.requires_grad], first):
        torch.testing.assert_close(p.grad, 2 * g)
    assert source.cost.calls == 2
