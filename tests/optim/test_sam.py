"""SAM / ASAM against pytorch-optimizer's SAM, plus the drop-in contract."""

from __future__ import annotations

import copy

import pytest
import torch
from pytorch_optimizer import SAM as RefSAM
from torch import nn

import gradkit
from gradkit.optim.sam import SAM
from helpers import (
    make_mlp,
    max_rel_diff,
    mse_closure,
    regression_batches,
    single_threaded_tests,  # noqa: F401  (autouse: one intra-op thread)
    train,
)
from optimizer_checks import resume_is_bit_exact


def _train_gradkit(model, opt, batches):
    train(model, opt, batches, use_closure=True)


def _train_reference(model, opt, batches):
    for x, y in batches:
        closure = mse_closure(opt, model, x, y)
        closure()  # pytorch-optimizer's SAM wants the gradient at w before step()
        opt.step(closure)


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize(
    ("base", "ref_base", "kw"),
    [
        ("sgd", torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
        ("adamw", torch.optim.AdamW, dict(lr=3e-3, weight_decay=0.1)),
    ],
)
def test_trajectory_matches_pytorch_optimizer(adaptive, base, ref_base, kw):
    model = make_mlp()
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    batches = regression_batches(150)
    rho = 0.5 if adaptive else 0.05
    _train_gradkit(a, SAM(a.parameters(), base, rho=rho, adaptive=adaptive, **kw), batches)
    _train_reference(b, RefSAM(b.parameters(), ref_base, rho=rho, adaptive=adaptive, **kw), batches)
    assert max_rel_diff(a, b) < 2e-5


def test_per_group_rho_matches_pytorch_optimizer():
    model = make_mlp()
    a, b = copy.deepcopy(model), copy.deepcopy(model)

    def groups(m):
        return [
            {"params": m[0].parameters(), "rho": 0.1},
            {"params": m[2].parameters(), "rho": 0.01, "lr": 0.02},
        ]

    batches = regression_batches(120)
    _train_gradkit(a, SAM(groups(a), "sgd", lr=0.05, momentum=0.9), batches)
    _train_reference(
        b, RefSAM(groups(b), torch.optim.SGD, rho=0.05, lr=0.05, momentum=0.9), batches
    )
    assert max_rel_diff(a, b) < 2e-5


def test_rho_zero_is_the_base_optimizer():
    model = make_mlp(dtype=torch.float64)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    batches = regression_batches(100, dtype=torch.float64)
    _train_gradkit(a, SAM(a.parameters(), "adam", rho=0.0, lr=1e-2), batches)
    _train_gradkit(b, torch.optim.Adam(b.parameters(), lr=1e-2), batches)
    assert max_rel_diff(a, b) < 1e-12


def test_registry_and_schedulers_share_param_groups():
    model = make_mlp()
    opt = gradkit.create_optimizer(model, "sam", lr=0.1, momentum=0.9)
    assert isinstance(opt.base_optimizer, gradkit.optim.SGD)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = regression_batches(1)[0]
    opt.step(mse_closure(opt, model, x, y))
    sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    assert opt.param_groups[0]["rho"] == 0.05


def test_state_dict_resume_is_exact(tmp_path):
    assert resume_is_bit_exact(
        lambda p: SAM(p, "adam", rho=0.05, lr=1e-2, betas=(0.9, 0.99)),
        tmp_path,
        steps=30,
        use_closure=True,
    )


def test_missing_closure_is_a_clear_error():
    model = make_mlp()
    opt = SAM(model.parameters())
    x, y = regression_batches(1)[0]
    nn.functional.mse_loss(model(x), y).backward()
    with pytest.raises(RuntimeError, match="SAM needs a closure.*loss.backward"):
        opt.step()


def test_base_optimizer_hyperparameters_are_validated():
    """SAM's own settings are in the generated contract test; the base optimizer's (here SGD's
    lr, passed through SAM) are checked when SAM builds it."""
    with pytest.raises(ValueError, match="lr must be >= 0"):
        SAM(make_mlp().parameters(), "sgd", lr=-1.0)


def test_bad_base_optimizer_raises():
    with pytest.raises(TypeError, match="base_optimizer"):
        SAM(make_mlp().parameters(), base_optimizer=3)
    with pytest.raises(ValueError, match="needs a closure itself"):
        SAM(make_mlp().parameters(), base_optimizer="sam")


def test_deepcopy_keeps_the_shared_param_groups():
    model = make_mlp()
    opt = SAM(model.parameters(), "adam", lr=1e-2)
    x, y = regression_batches(1)[0]
    opt.step(mse_closure(opt, model, x, y))
    clone = copy.deepcopy(opt)
    assert clone.param_groups is clone.base_optimizer.param_groups
    assert len(clone.state) == len(opt.state)
    clone.param_groups[0]["rho"] = 0.5
    assert opt.param_groups[0]["rho"] == 0.05
