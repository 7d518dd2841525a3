"""Ranger21's warmup / warmdown schedule against pytorch-optimizer's."""

from __future__ import annotations

import pytest
import pytorch_optimizer as po
import torch

from gradkit.transforms.lr_schedule import LinearWarmupWarmdown


@pytest.mark.parametrize(
    ("n_iter", "warm", "down"), [(200, None, None), (10000, None, None), (300, 17, 50)]
)
def test_matches_pytorch_optimizer(n_iter, warm, down):
    lr = 3e-3
    theirs = po.Ranger21(
        [torch.zeros(2, requires_grad=True)],
        num_iterations=n_iter,
        lr=lr,
        num_warm_up_iterations=warm,
        num_warm_down_iterations=down,
    )
    group = {
        "lr": lr,
        "betas": (0.9, 0.999),
        "num_iterations": n_iter,
        "num_warm_up_iterations": warm,
        "num_warm_down_iterations": down,
        "warm_down_min_lr": 3e-5,
        "disable_lr_scheduler": False,
    }
    sched = LinearWarmupWarmdown()
    for t in range(1, n_iter + 3):
        expected = theirs.warm_down(theirs.warm_up_dampening(lr, t), t)
        assert sched(group, t) == pytest.approx(expected, rel=1e-12)


def test_without_num_iterations_only_warms_up():
    group = {
        "lr": 1.0,
        "betas": (0.9, 0.99),
        "num_iterations": None,
        "num_warm_up_iterations": None,
        "num_warm_down_iterations": None,
        "warm_down_min_lr": 0.0,
        "disable_lr_scheduler": False,
    }
    sched = LinearWarmupWarmdown()
    assert sched(group, 100) == pytest.approx(0.5)  # ceil(2 / (1 - 0.99)) = 200 steps
    assert sched(group, 10**6) == 1.0
    assert sched({**group, "disable_lr_scheduler": True}, 1) == 1.0
