"""gradkit SGD / Adam / AdamW follow torch.optim step for step.

Tolerance: 1e-6 relative (per-parameter ||a - b|| / ||b||) after 200 fp32 steps. The two
implementations do the same arithmetic in a different order, so they differ by a few ulps per step;
in float64 they agree to 1e-12, which shows the math is the same and the fp32 gap is rounding.
"""

from __future__ import annotations

import pytest
import torch

import gradkit
from helpers import max_rel_diff, run_pair

CASES = [
    ("sgd", torch.optim.SGD, dict(lr=1e-2)),
    ("sgd", torch.optim.SGD, dict(lr=1e-2, momentum=0.9)),
    ("sgd", torch.optim.SGD, dict(lr=1e-2, momentum=0.9, dampening=0.5, weight_decay=1e-2)),
    ("sgd", torch.optim.SGD, dict(lr=1e-2, momentum=0.9, nesterov=True, weight_decay=0.1)),
    ("adam", torch.optim.Adam, dict(lr=1e-3)),
    ("adam", torch.optim.Adam, dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("adam", torch.optim.Adam, dict(lr=1e-2, amsgrad=True)),
    ("adamw", torch.optim.AdamW, dict(lr=1e-3)),
    ("adamw", torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize(("name", "ref", "kwargs"), CASES)
def test_matches_torch_fp32(name, ref, kwargs, foreach, device):
    a, b = run_pair(
        lambda p: gradkit.create_optimizer(p, name, **kwargs),
        lambda p: ref(p, foreach=foreach, **kwargs),
        steps=200,
        device=device,
    )
    assert max_rel_diff(a, b) < 1e-6


@pytest.mark.parametrize(("name", "ref", "kwargs"), CASES)
def test_matches_torch_fp64(name, ref, kwargs):
    a, b = run_pair(
        lambda p: gradkit.create_optimizer(p, name, **kwargs),
        lambda p: ref(p, foreach=False, **kwargs),
        steps=200,
        dtype=torch.float64,
    )
    assert max_rel_diff(a, b) < 1e-12


@pytest.mark.parametrize(("name", "ref", "kwargs"), [CASES[3], CASES[5], CASES[8]])
def test_maximize_matches_torch(name, ref, kwargs):
    a, b = run_pair(
        lambda p: gradkit.create_optimizer(p, name, maximize=True, **kwargs),
        lambda p: ref(p, maximize=True, **kwargs),
        steps=10,  # ascent on a convex loss diverges: keep it short so rounding is not amplified
        dtype=torch.float64,
    )
    assert max_rel_diff(a, b) < 1e-12


def test_moves_differently_from_a_wrong_reference():
    """The comparison can fail: AdamW against Adam with the same weight decay differs."""
    kwargs = dict(lr=1e-2, weight_decay=0.1)
    a, b = run_pair(
        lambda p: gradkit.create_optimizer(p, "adamw", **kwargs),
        lambda p: torch.optim.Adam(p, **kwargs),
        steps=50,
    )
    assert max_rel_diff(a, b) > 1e-4
