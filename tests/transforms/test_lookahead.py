"""Lookahead around SGD and Adam against pytorch-optimizer.

torch-optimizer's Lookahead merges at steps 1, k+1, 2k+1, ... from slow weights taken after
the first step, a shifted schedule (see docs/differences.md), so it is not used.
"""

from __future__ import annotations

import pytest
import pytorch_optimizer as po
import torch

from gradkit.core.optimizer import ChainOptimizer
from gradkit.core.transform import chain
from gradkit.transforms.lookahead import Lookahead
from gradkit.transforms.moments import Momentum, ScaleByAdam
from gradkit.transforms.scaling import ScaleByLearningRate
from optimizer_checks import compare


def _ours_sgd(p):
    return ChainOptimizer(
        p,
        chain(Momentum(), ScaleByLearningRate(), Lookahead()),
        {"lr": 0.05, "momentum": 0.9, "lookahead_k": 5, "lookahead_alpha": 0.5},
    )


def _ours_adam(p):
    return ChainOptimizer(
        p,
        chain(ScaleByAdam(), ScaleByLearningRate(), Lookahead()),
        {"lr": 1e-2, "lookahead_k": 6, "lookahead_alpha": 0.7},
    )


@pytest.mark.parametrize("problem", ["mlp", "quadratic"])
def test_matches_pytorch_optimizer(problem):
    def theirs_sgd(p):
        return po.Lookahead(torch.optim.SGD(p, lr=0.05, momentum=0.9), k=5, alpha=0.5)

    def theirs_adam(p):
        return po.Lookahead(torch.optim.Adam(p, lr=1e-2), k=6, alpha=0.7)

    assert compare(_ours_sgd, theirs_sgd, problem) < 1e-5
    assert compare(_ours_adam, theirs_adam, problem) < 1e-5


def test_one_buffer_and_bad_k():
    p = torch.zeros(3, requires_grad=True)
    opt = ChainOptimizer([p], chain(ScaleByLearningRate(), Lookahead()), {"lr": 0.1})
    p.grad = torch.ones(3)
    opt.step()
    assert [k for k in opt.state[p] if k != "step"] == ["slow_params"]
    with pytest.raises(ValueError, match="lookahead_k"):
        ChainOptimizer([p], chain(ScaleByLearningRate(), Lookahead()), {"lookahead_k": 0})
