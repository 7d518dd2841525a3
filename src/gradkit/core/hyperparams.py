"""Specifications of settings and their validation.

gradkit has two kinds of settings, declared with the same specifications:

- **group hyperparameters** (``lr``, ``betas``, ``weight_decay``, ...): live. Each transform
  declares those it reads from the param group; they are validated for every group at
  construction and in ``add_param_group``, type included, and read again every step (so
  schedulers and per-group values work).
- **construction options** (``amsgrad``, ``kappa``, ``nonfinite``, ``fused``, ...): structural.
  An optimizer declares them; they are validated once, given to the recipe that builds the chain,
  and never copied into param groups or the state dict.

A bad value raises ``ValueError`` with one message template,
``"Invalid lr: -1; lr must be >= 0"`` (see :func:`gradkit.errors.invalid_value`). Every
specification also lists values it must refuse (:meth:`Hyperparameter.invalid_examples`), which
the contract test over every optimizer uses. Specifications are plain dataclasses (no closures),
so optimizers that hold them pickle and deep-copy.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gradkit.errors import invalid_value

__all__ = [
    "Hyperparameter",
    "Interval",
    "Betas",
    "Choice",
    "Flag",
    "Predicate",
    "interval",
    "integer",
    "betas",
    "choice",
    "flag",
    "validate_group",
]


@dataclass(frozen=True)
class Hyperparameter:
    """A named setting with a default and a validity check (any value; subclasses narrow it)."""

    name: str
    default: Any

    @property
    def allowed(self) -> str:
        """Human-readable description of the valid values (used in the error message)."""
        return "any value"

    def check(self, value: Any) -> bool:
        """True for a valid value."""
        return True

    def validate(self, value: Any) -> None:
        """Raise ValueError naming the setting and its allowed values unless ``value`` is valid."""
        try:
            ok = bool(self.check(value))
        except (TypeError, ValueError, RuntimeError):
            ok = False
        if not ok:
            raise invalid_value(self.name, value, self.allowed)

    def invalid_examples(self) -> list[Any]:
        """Values that this specification must refuse (for contract tests)."""
        return []


def _as_real(value: Any) -> float:
    """``value`` as a float if it is a real number (Python, numpy or a one-element tensor).

    Strings and booleans are refused (``float("0.01")`` would accept a string that fails later
    inside a transform).
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
            raise TypeError("a real number tensor with one element is needed")
        return float(value.item())
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{type(value).__name__} is not a real number")
    return float(value)


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


@dataclass(frozen=True)
class Interval(Hyperparameter):
    """A real number (an integer with ``integer=True``) in an interval."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    allow_none: bool = False
    integer: bool = False

    @property
    def allowed(self) -> str:
        low, high = self.low, self.high
        if low is None and high is None:
            text = "an integer" if self.integer else "a finite number"
        elif high is None:
            text = f"{'>' if self.low_open else '>='} {low:g}"
        elif low is None:
            text = f"{'<' if self.high_open else '<='} {high:g}"
        else:
            left = "(" if self.low_open else "["
            right = ")" if self.high_open else "]"
            text = f"in {left}{low:g}, {high:g}{right}"
        if self.integer and (low is not None or high is not None):
            text = f"an integer {text}"
        return text + (" or None" if self.allow_none else "")

    def check(self, value: Any) -> bool:
        if value is None:
            return self.allow_none
        if self.integer and (
            isinstance(value, bool) or not isinstance(value, (numbers.Integral, torch.Tensor))
        ):
            return False
        x = _as_real(value)
        if self.integer and x != int(x):
            return False
        return _in_interval(x, self.low, self.high, self.low_open, self.high_open)

    def invalid_examples(self) -> list[Any]:
        out: list[Any] = [f"{self.default}", float("nan")]
        if self.low is not None:
            out.append(self.low if self.low_open else self.low - 1)
        if self.high is not None:
            out.append(self.high if self.high_open else self.high + 1)
        if self.integer:
            out.append(2.5)
        if not self.allow_none:
            out.append(None)
        return out


@dataclass(frozen=True)
class Betas(Hyperparameter):
    """A tuple of coefficients, each in [0, 1) (or [0, 1] with ``high_open=False``)."""

    high_open: bool = True

    @property
    def allowed(self) -> str:
        return (
            f"a tuple of {len(self.default)} numbers each in [0, 1{')' if self.high_open else ']'}"
        )

    def check(self, value: Any) -> bool:
        if not isinstance(value, (tuple, list)) or len(value) != len(self.default):
            return False
        return all(_in_interval(_as_real(b), 0.0, 1.0, False, self.high_open) for b in value)

    def invalid_examples(self) -> list[Any]:
        n = len(self.default)
        bad_high = 1.0 if self.high_open else 1.5
        return [
            tuple([bad_high] * n),
            tuple([-0.1] * n),
            tuple(str(b) for b in self.default),
            tuple(self.default) + (0.5,),
            0.9,
        ]


@dataclass(frozen=True)
class Choice(Hyperparameter):
    """One of a fixed set of values."""

    options: tuple[Any, ...] = ()

    @property
    def allowed(self) -> str:
        return f"one of {self.options!r}"

    def check(self, value: Any) -> bool:
        return any(value is o or (type(value) is type(o) and value == o) for o in self.options)

    def invalid_examples(self) -> list[Any]:
        return ["no-such-option"]


@dataclass(frozen=True)
class Flag(Hyperparameter):
    """A boolean (``True`` or ``False``; ``1`` and ``"yes"`` are refused)."""

    @property
    def allowed(self) -> str:
        return "True or False"

    def check(self, value: Any) -> bool:
        return isinstance(value, bool)

    def invalid_examples(self) -> list[Any]:
        return ["yes"]


@dataclass(frozen=True)
class Predicate(Hyperparameter):
    """A value that ``check`` accepts; ``allowed`` describes it for the error message.

    For a transform of your own whose values no other specification describes. Use a
    module-level function as ``check`` so that optimizers holding it still pickle (a lambda
    deep-copies but does not pickle).

    >>> even = Predicate("groups", 2, check=lambda v: isinstance(v, int) and v % 2 == 0,
    ...                  allowed="an even integer")
    >>> even.validate(3)
    Traceback (most recent call last):
    ...
    ValueError: Invalid groups: 3; groups must be an even integer
    """

    check_fn: Callable[[Any], bool] | None = None
    description: str = "a valid value"

    def __init__(
        self, name: str, default: Any, *, check: Callable[[Any], bool], allowed: str
    ) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "default", default)
        object.__setattr__(self, "check_fn", check)
        object.__setattr__(self, "description", allowed)

    @property
    def allowed(self) -> str:
        return self.description

    def check(self, value: Any) -> bool:
        return bool(self.check_fn(value))


def interval(
    name: str,
    default: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool = False,
) -> Interval:
    """A real number in an interval, e.g. ``interval("lr", 1e-3, low=0)`` for lr >= 0."""
    return Interval(name, default, low, high, low_open, high_open, allow_none)


def integer(
    name: str, default: Any, low: int | None = None, high: int | None = None, *, allow_none=False
) -> Interval:
    """An integer in ``[low, high]``, e.g. ``integer("ns_steps", 5, low=1)``."""
    return Interval(name, default, low, high, allow_none=allow_none, integer=True)


def betas(name: str, default: Sequence[float], *, high_open: bool = True) -> Betas:
    """A tuple of coefficients, each in [0, 1) (or [0, 1] with ``high_open=False``)."""
    return Betas(name, tuple(default), high_open)


def choice(name: str, default: Any, options: Sequence[Any]) -> Choice:
    """One of a fixed set of values (compared by identity or by equal value of the same type)."""
    return Choice(name, default, tuple(options))


def flag(name: str, default: bool) -> Flag:
    """A boolean."""
    return Flag(name, default)


def validate_group(group: Mapping[str, Any], specs: Mapping[str, Hyperparameter]) -> None:
    """Raise ValueError for the first value in ``group`` that its specification rejects."""
    for name, spec in specs.items():
        if name in group:
            spec.validate(group[name])
