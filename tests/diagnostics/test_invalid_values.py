"""Invalid arguments of the diagnostics are refused at entry with one message template.

``Invalid {name}: {value!r}; {name} must be {allowed}`` (see :func:`gradkit.errors.invalid_value`):
each case checks the parameter named, the value shown and the allowed range stated. The loss and
performance functions passed here fail the test when called, so every case also checks that the
argument is refused before any work is done. Unknown names raise
:class:`gradkit.errors.UnknownNameError`.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diagnostics.linear_problems import linear_regression
from gradkit.diagnostics.connectivity import linear_interpolation, renormalize
from gradkit.diagnostics.effective_lr import (
    EffectiveLRTracker,
    effective_learning_rates,
    effective_lr,
    find_scale_invariant,
)
from gradkit.diagnostics.example_scores import el2n_scores, grand_scores
from gradkit.diagnostics.intrinsic_dimension import (
    intrinsic_dimension,
    random_projection,
    train_in_subspace,
)
from gradkit.diagnostics.landscape import hessian_directions, normalize_direction
from gradkit.diagnostics.roughness import roughness_index
from gradkit.diagnostics.sharpness import SharpnessTracker, sharpness
from gradkit.diagnostics.spectrum import hessian_spectrum, split_outliers
from gradkit.diagnostics.subspace import SubspaceTracker, gradient_subspace
from gradkit.diagnostics.weight_matching import weight_matching
from gradkit.errors import UnknownNameError
from helpers import single_threaded_tests  # noqa: F401  (autouse: one intra-op thread)
from invalid_value_cases import assert_invalid_value_message, case_id

MODEL, X, Y = linear_regression(0, 16, 4, scale=(0.5, 2.0))
DATA = (X, Y)


def never(*args, **kwargs):
    """A loss or performance function that must not be reached."""
    pytest.fail("the argument was not checked before the work started")


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)).double()


def _tracker_kind(kind):
    opt = torch.optim.SGD(MODEL.parameters(), lr=0.1)
    return EffectiveLRTracker(MODEL, opt, ["weight"], kind=kind)


CASES = [
    # (call, parameter, bad value, allowed range)
    (lambda: effective_lr(-0.1, torch.ones(2)), "lr", -0.1, "a finite number >= 0"),
    (lambda: effective_lr(0.1, torch.ones(2), "lion"), "kind", "lion", "one of ('sgd', 'adam')"),
    (lambda: _tracker_kind("adamw"), "kind", "adamw", "one of ('sgd', 'adam')"),
    (
        lambda: find_scale_invariant(MODEL, X, scale=1.0),
        "scale",
        1.0,
        "a finite number > 0 and != 1",
    ),
    (lambda: find_scale_invariant(MODEL, X, rtol=-1e-4), "rtol", -1e-4, "a finite number >= 0"),
    (lambda: renormalize(MODEL, DATA, max_batches=0), "max_batches", 0, "a positive integer"),
    (
        lambda: grand_scores(MODEL, never, X, Y, batch_size=0),
        "batch_size",
        0,
        "a positive integer or None",
    ),
    (
        lambda: el2n_scores(_mlp(), X, torch.zeros(16, dtype=torch.long), batch_size=-1),
        "batch_size",
        -1,
        "a positive integer or None",
    ),
    (lambda: random_projection(10, 0), "dim", 0, "a positive integer"),
    (lambda: random_projection(0, 2), "num_params", 0, "a positive integer"),
    (lambda: train_in_subspace(MODEL, never, DATA, 2, steps=0), "steps", 0, "a positive integer"),
    (lambda: train_in_subspace(MODEL, never, DATA, 2, lr=0.0), "lr", 0.0, "a finite number > 0"),
    (
        lambda: train_in_subspace(MODEL, never, DATA, 2, optimizer="rmsprop"),
        "optimizer",
        "rmsprop",
        "one of ('adam', 'sgd', 'lbfgs')",
    ),
    (lambda: train_in_subspace(MODEL, never, DATA, 0), "dim", 0, "a positive integer or None"),
    (
        lambda: train_in_subspace(MODEL, never, DATA, 2, max_projection_numel=0),
        "max_projection_numel",
        0,
        "a positive integer",
    ),
    (
        lambda: intrinsic_dimension(MODEL, never, DATA, never, [1, 2], threshold=0.0),
        "threshold",
        0.0,
        "in (0, 1]",
    ),
    (
        lambda: intrinsic_dimension(MODEL, never, DATA, never, [1, 2], threshold=1.5),
        "threshold",
        1.5,
        "in (0, 1]",
    ),
    (
        lambda: intrinsic_dimension(MODEL, never, DATA, never, [0, 2]),
        "dims",
        [0, 2],
        "a non-empty sequence of positive integers",
    ),
    (
        lambda: intrinsic_dimension(MODEL, never, DATA, never, [1.5]),
        "dims",
        [1.5],
        "a non-empty sequence of positive integers",
    ),
    (
        lambda: intrinsic_dimension(MODEL, never, DATA, never, [1], full_performance=0.0),
        "full_performance",
        0.0,
        "a finite number > 0 or None",
    ),
    (
        lambda: intrinsic_dimension(MODEL, never, DATA, never, [1], lr=-1.0),
        "lr",
        -1.0,
        "a finite number > 0",
    ),
    (
        lambda: normalize_direction([torch.ones(1, 4)], list(MODEL.parameters()), norm="l2"),
        "norm",
        "l2",
        "one of ('filter', 'layer', 'none')",
    ),
    (lambda: hessian_directions(MODEL, never, DATA, k=0), "k", 0, "a positive integer"),
    (
        lambda: roughness_index(MODEL, never, DATA, num_directions=1),
        "num_directions",
        1,
        "an integer >= 2",
    ),
    (lambda: sharpness(MODEL, never, DATA, k=0), "k", 0, "a positive integer"),
    (lambda: sharpness(MODEL, never, DATA, tol=0.0), "tol", 0.0, "a finite number > 0"),
    (
        lambda: sharpness(MODEL, never, DATA, operator="fisher"),
        "operator",
        "fisher",
        "one of ('hessian', 'gauss_newton')",
    ),
    (lambda: SharpnessTracker(MODEL, never, DATA, every=0), "every", 0, "a positive integer"),
    (lambda: SharpnessTracker(MODEL, never, DATA, k=0), "k", 0, "a positive integer"),
    (lambda: SharpnessTracker(MODEL, never, DATA, tol=-1.0), "tol", -1.0, "a finite number > 0"),
    (lambda: SharpnessTracker(MODEL, never, DATA, max_iter=0), "max_iter", 0, "a positive integer"),
    (
        lambda: SharpnessTracker(MODEL, never, DATA, max_samples=0),
        "max_samples",
        0,
        "a positive integer or None",
    ),
    (
        lambda: SharpnessTracker(MODEL, never, DATA).update(0, lr=math.inf),
        "lr",
        math.inf,
        "a finite number > 0",
    ),
    (lambda: split_outliers([3.0, 1.0], min_gap=1.0), "min_gap", 1.0, "a number > 1"),
    (lambda: hessian_spectrum(MODEL, never, DATA, k=0), "k", 0, "a positive integer"),
    (lambda: hessian_spectrum(MODEL, never, DATA, min_gap=0.5), "min_gap", 0.5, "a number > 1"),
    (
        lambda: hessian_spectrum(MODEL, never, DATA, num_steps=0),
        "num_steps",
        0,
        "a positive integer",
    ),
    (lambda: gradient_subspace(MODEL, never, DATA, k=0), "k", 0, "a positive integer"),
    (lambda: SubspaceTracker(MODEL, never, DATA, every=0), "every", 0, "a positive integer"),
    (lambda: SubspaceTracker(MODEL, never, DATA, k=-2), "k", -2, "a positive integer"),
    (lambda: SubspaceTracker(MODEL, never, DATA, tol=0.0), "tol", 0.0, "a finite number > 0"),
    (lambda: SubspaceTracker(MODEL, never, DATA, max_iter=0), "max_iter", 0, "a positive integer"),
    (lambda: weight_matching(_mlp(), _mlp(), max_iter=0), "max_iter", 0, "a positive integer"),
]


@pytest.mark.parametrize(
    ("call", "name", "value", "allowed"), CASES, ids=[case_id(c) for c in CASES]
)
def test_invalid_value_message(call, name, value, allowed):
    assert_invalid_value_message(call, name, value, allowed)


def test_roughness_grid_is_checked_before_any_slice():
    with pytest.raises(ValueError, match="^alphas must have at least 3 grid points"):
        roughness_index(MODEL, never, DATA, alphas=[-1.0, 1.0])


def test_unknown_parameter_name():
    opt = torch.optim.SGD(MODEL.parameters(), lr=0.1)
    with pytest.raises(UnknownNameError) as info:
        effective_learning_rates(MODEL, opt, ["weigth"])
    assert isinstance(info.value, ValueError)
    assert str(info.value) == "unknown parameter 'weigth'; known parameters: weight"
    assert info.value.known == ("weight",)


def test_unknown_state_dict_key():
    a, b = _mlp(), _mlp()
    with pytest.raises(UnknownNameError) as info:
        linear_interpolation(a, b, never, DATA, keys=["0.weight", "2.weihgt"])
    assert str(info.value) == (
        "unknown state_dict key '2.weihgt'; known state_dict keys: "
        "0.bias, 0.weight, 2.bias, 2.weight"
    )
