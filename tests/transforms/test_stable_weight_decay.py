"""Stable weight decay: ``p <- (1 - lr * wd / sqrt(mean(v_hat))) p``, and no decay while
``mean(v_hat)`` is 0."""

from __future__ import annotations

import torch

from gradkit import ChainOptimizer, chain
from gradkit.transforms.stable_weight_decay import StableWeightDecay


class FixedSecondMoment:
    """A second-moment source that reports a given mean."""

    def __init__(self, mean: float) -> None:
        self.mean = torch.tensor(mean)

    def mean_second_moment(self) -> torch.Tensor:
        return self.mean


def _one_step(mean: float, lr: float = 0.1, wd: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5, 3))
    start = p.detach().clone()
    opt = ChainOptimizer([p], chain(StableWeightDecay(FixedSecondMoment(mean))), {"lr": lr})
    opt.param_groups[0]["weight_decay"] = wd
    p.grad = torch.zeros_like(p)
    opt.step()
    return start, p.detach()


def test_decay_is_divided_by_the_root_of_the_mean_second_moment() -> None:
    start, after = _one_step(mean=0.04)  # sqrt = 0.2: factor 1 - 0.1 * 0.5 / 0.2 = 0.75
    torch.testing.assert_close(after, start * 0.75)


def test_no_decay_while_the_mean_second_moment_is_zero() -> None:
    start, after = _one_step(mean=0.0)
    assert torch.equal(after, start)


def test_ranger21_keeps_parameters_finite_when_every_gradient_is_zero() -> None:
    import gradkit

    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = gradkit.create_optimizer([p], "ranger21")
    for _ in range(3):
        p.grad = torch.zeros_like(p)
        opt.step()
    assert torch.isfinite(p).all()
