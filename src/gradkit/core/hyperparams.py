"""Hyperparameter specifications and their validation.

Every transform declares the hyperparameters it reads from a param group. The optimizer checks
each group against these specifications when the group is added, so that a bad value fails at
construction with a ValueError that names the parameter and its allowed range.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Hyperparameter", "interval", "betas", "choice", "flag", "validate_group"]


@dataclass(frozen=True)
class Hyperparameter:
    """A named hyperparameter with a default and a validity check.

    ``check`` returns True for a valid value; ``allowed`` is the human-readable description of
    the valid values used in the error message.
    """

    name: str
    default: Any
    check: Callable[[Any], bool] = field(repr=False, default=lambda value: True)
    allowed: str = "any value"

    def validate(self, value: Any) -> None:
        try:
            ok = bool(self.check(value))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"Invalid {self.name}: {value!r}; {self.name} must be {self.allowed}")


def _as_float(value: Any) -> float:
    if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
        value = value.item()
    if isinstance(value, bool):
        raise TypeError("bool is not a number")
    return float(value)


def _describe_interval(
    low: float | None, high: float | None, low_open: bool, high_open: bool
) -> str:
    if low is None and high is None:
        return "a finite number"
    if high is None:
        return f"{'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"{'<' if high_open else '<='} {high:g}"
    left = "(" if low_open else "["
    right = ")" if high_open else "]"
    return f"in {left}{low:g}, {high:g}{right}"


def _in_interval(
    x: float, low: float | None, high: float | None, low_open: bool, high_open: bool
) -> bool:
    if math.isnan(x):
        return False
    if low is not None and (x < low or (low_open and x == low)):
        return False
    if high is not None and (x > high or (high_open and x == high)):
        return False
    return not (math.isinf(x) and (low is None or high is None) and x not in (low, high))


def interval(
    name: str,
    default: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool = False,
) -> Hyperparameter:
    """A real number in an interval, e.g. ``interval("lr", 1e-3, low=0)`` for lr >= 0."""
    text = _describe_interval(low, high, low_open, high_open)
    if allow_none:
        text += " or None"

    def check(value: Any) -> bool:
        if value is None:
            return allow_none
        return _in_interval(_as_float(value), low, high, low_open, high_open)

    return Hyperparameter(name, default, check, text)


def betas(name: str, default: Sequence[float], *, high_open: bool = True) -> Hyperparameter:
    """A tuple of coefficients, each in [0, 1) (or [0, 1] with ``high_open=False``)."""
    n = len(default)
    right = ")" if high_open else "]"

    def check(value: Any) -> bool:
        if not isinstance(value, (tuple, list)) or len(value) != n:
            return False
        return all(_in_interval(_as_float(b), 0.0, 1.0, False, high_open) for b in value)

    return Hyperparameter(
        name, tuple(default), check, f"a tuple of {n} numbers each in [0, 1{right}"
    )


def choice(name: str, default: Any, options: Sequence[Any]) -> Hyperparameter:
    """One of a fixed set of values."""
    opts = tuple(options)
    return Hyperparameter(name, default, lambda v: v in opts, f"one of {opts!r}")


def flag(name: str, default: bool) -> Hyperparameter:
    """A boolean."""
    return Hyperparameter(name, default, lambda v: isinstance(v, bool), "True or False")


def validate_group(group: Mapping[str, Any], specs: Mapping[str, Hyperparameter]) -> None:
    """Raise ValueError for the first value in ``group`` that its specification rejects."""
    for name, spec in specs.items():
        if name in group:
            spec.validate(group[name])
