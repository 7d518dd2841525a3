"""Stable weight decay: ``p <- (1 - lr * wd / sqrt(mean(v_hat))) p``, and no decay while
``mean(v_hat)`` is 0."""

from __future__ import annotations

import pytest
import torch

from gradkit import ChainOptimizer, chain
from gradkit.core.transform import StepContext
from gradkit.transforms.pnm import ScaleByAdaPNM
from gradkit.transforms.stable_weight_decay import StableWeightDecay


class FixedSecondMoment:
    """A second-moment source that reports a given mean."""

    def __init__(self, mean: float) -> None:
        self.mean = torch.tensor(mean)

    def mean_second_moment(self, ctx) -> torch.Tensor:
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


def test_pnm_keeps_its_second_moment_in_the_step_context_only() -> None:
    """ScaleByAdaPNM hands its bias-corrected second moment to StableWeightDecay through
    ``ctx.shared`` (a dict made per step and group): the decay factor is
    ``1 - lr * wd / sqrt(mean(v / (1 - b2^t)))`` with this step's ``v``, the transform object
    keeps no tensors between steps, and asking outside a step is a clear error."""
    torch.manual_seed(0)
    start = torch.randn(5, 3)
    g = torch.randn(5, 3)
    moved = {}
    for with_decay in (False, True):
        p = torch.nn.Parameter(start.clone())
        pnm = ScaleByAdaPNM()
        transforms = (pnm, StableWeightDecay(pnm)) if with_decay else (pnm,)
        opt = ChainOptimizer([p], chain(*transforms), {"lr": 0.1, "weight_decay": 0.5})
        p.grad = g.clone()
        opt.step()
        moved[with_decay] = p.detach().clone()
        assert not any(
            torch.is_tensor(v) or isinstance(v, (list, tuple)) for v in vars(pnm).values()
        )
    mean_v = (g * g).mean()  # v = (1 - b2) g^2 after one step; bias-corrected: g^2
    factor = 1 - 0.1 * 0.5 / mean_v.sqrt()
    # decayed run: factor * start + direction; undecayed run: start + direction
    torch.testing.assert_close(moved[True] - factor * start, moved[False] - start)
    with pytest.raises(RuntimeError, match="earlier in the same step"):
        pnm.mean_second_moment(StepContext(group={}, steps=[1], grads=[]))
