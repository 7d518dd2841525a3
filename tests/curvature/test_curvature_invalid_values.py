"""Invalid arguments of the curvature engine are refused at entry with one message template.

``Invalid {name}: {value!r}; {name} must be {allowed}`` (see :func:`gradkit.errors.invalid_value`):
each case checks the parameter named, the value shown and the allowed range stated.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradkit.curvature import (
    GaussNewtonOperator,
    HessianOperator,
    hutchinson_diagonal,
    hutchinson_trace,
    lanczos_tridiagonal,
    spectral_density,
    top_eigenpairs,
)
from helpers import single_threaded_tests  # noqa: F401  (autouse: one intra-op thread)
from invalid_value_cases import assert_invalid_value_message, case_id


def _problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()  # 8 parameters
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 3, generator=g, dtype=torch.float64)
    y = torch.randn(10, 2, generator=g, dtype=torch.float64)
    return model, x, y


def _op() -> HessianOperator:
    model, x, y = _problem()
    return HessianOperator(model, nn.functional.mse_loss, (x, y))


def _density():
    return spectral_density(_op(), num_steps=4)


def _hessian(**kw):
    model, x, y = _problem()
    return HessianOperator(model, nn.functional.mse_loss, (x, y), **kw)


def _gauss_newton(**kw):
    model, x, y = _problem()
    return GaussNewtonOperator(model, nn.functional.mse_loss, (x, y), **kw)


CASES = [
    # (call, parameter, bad value, allowed range)
    (lambda: hutchinson_trace(_op(), num_samples=0), "num_samples", 0, "a positive integer"),
    (lambda: hutchinson_trace(_op(), num_samples=2.0), "num_samples", 2.0, "a positive integer"),
    (lambda: hutchinson_trace(_op(), tol=0.0), "tol", 0.0, "a finite number > 0 or None"),
    (lambda: hutchinson_trace(_op(), tol=math.nan), "tol", math.nan, "a finite number > 0 or None"),
    (lambda: hutchinson_trace(_op(), min_samples=1), "min_samples", 1, "an integer >= 2"),
    (
        lambda: hutchinson_trace(_op(), method="xtrace"),
        "method",
        "xtrace",
        "one of ('hutchinson', 'hutch++')",
    ),
    (
        lambda: hutchinson_trace(_op(), num_samples=10, method="hutch++", sketch_size=5),
        "sketch_size",
        5,
        "an integer in [1, 5) for hutch++ with num_samples=10",
    ),
    (
        lambda: hutchinson_trace(_op(), num_samples=2, method="hutch++"),
        "num_samples",
        2,
        "an integer >= 3 for hutch++",
    ),
    (lambda: hutchinson_diagonal(_op(), num_samples=-1), "num_samples", -1, "a positive integer"),
    (lambda: top_eigenpairs(_op(), k=0), "k", 0, "a positive integer"),
    (lambda: top_eigenpairs(_op(), k=True), "k", True, "a positive integer"),
    (lambda: top_eigenpairs(_op(), k=9), "k", 9, "<= the number of parameters (8)"),
    (lambda: top_eigenpairs(_op(), tol=-1e-3), "tol", -1e-3, "a finite number > 0"),
    (lambda: top_eigenpairs(_op(), tol=math.inf), "tol", math.inf, "a finite number > 0"),
    (lambda: top_eigenpairs(_op(), max_iter=0), "max_iter", 0, "a positive integer"),
    (
        lambda: top_eigenpairs(_op(), init="random"),
        "init",
        "random",
        "None, 'gradient' or a list of tensors",
    ),
    (
        lambda: lanczos_tridiagonal(lambda v: v, torch.ones(4), num_steps=0),
        "num_steps",
        0,
        "a positive integer",
    ),
    (lambda: spectral_density(_op(), num_steps=0), "num_steps", 0, "a positive integer"),
    (lambda: spectral_density(_op(), num_probes=0), "num_probes", 0, "a positive integer"),
    (lambda: spectral_density(_op(), sigma=0.0), "sigma", 0.0, "a finite number > 0 or None"),
    (lambda: spectral_density(_op(), num_points=1), "num_points", 1, "an integer >= 2"),
    (
        lambda: _density().evaluate(torch.zeros(3), sigma=-1.0),
        "sigma",
        -1.0,
        "a finite number > 0 or None",
    ),
    (lambda: _hessian(max_samples=0), "max_samples", 0, "a positive integer or None"),
    (lambda: _gauss_newton(max_samples=2.5), "max_samples", 2.5, "a positive integer or None"),
    (lambda: _hessian(hvp_method="fd"), "hvp_method", "fd", "one of ('autograd', 'func')"),
]


@pytest.mark.parametrize(
    ("call", "name", "value", "allowed"), CASES, ids=[case_id(c) for c in CASES]
)
def test_invalid_value_message(call, name, value, allowed):
    assert_invalid_value_message(call, name, value, allowed)


def test_lanczos_refuses_a_zero_start_vector():
    with pytest.raises(ValueError, match="^v0 must be a finite, nonzero start vector$"):
        lanczos_tridiagonal(lambda v: v, torch.zeros(4), num_steps=2)


def test_arguments_are_checked_before_any_product():
    op = _op()
    for call in (
        lambda: hutchinson_trace(op, num_samples=10, tol=-1.0),
        lambda: top_eigenpairs(op, k=2, max_iter=0),
        lambda: spectral_density(op, num_steps=5, num_points=0),
    ):
        with pytest.raises(ValueError, match="^Invalid "):
            call()
    assert op.num_matvecs == 0
