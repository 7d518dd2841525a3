"""Errors and names shared by every part of gradkit.

- :func:`canonical_name`: the one normalisation of user-facing names (optimizers, tasks, CLI
  options that name them): case, dashes, spaces and underscores are alike.
- :class:`UnknownNameError`: a name that is not known; a ``ValueError`` whose message lists the
  known names (and is not repr-quoted, unlike ``KeyError``).
- :func:`invalid_value`: the one message template for a value outside its allowed range,
  ``"Invalid lr: -1; lr must be >= 0"``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["UnknownNameError", "canonical_name", "invalid_value"]


def canonical_name(name: str) -> str:
    """The registry form of a name: lower case, ``-`` and spaces as ``_``.

    >>> canonical_name(" Stable-SPAM "), canonical_name("lion kappa")
    ('stable_spam', 'lion_kappa')
    """
    if not isinstance(name, str):
        raise TypeError(f"a name must be a string, got {type(name).__name__}")
    return "_".join(name.strip().lower().replace("-", " ").replace("_", " ").split())


class UnknownNameError(ValueError, KeyError):
    """A name that is not registered; ``known`` lists the names that are.

    A ``ValueError``; also a ``KeyError`` for code written against gradkit 0.1, whose registry
    raised one (deprecated: catch ``UnknownNameError`` or ``ValueError``). Unlike a plain
    ``KeyError`` its message is not repr-quoted.

    >>> str(UnknownNameError("optimizer", "adamz", ["sgd", "adamw"]))
    "unknown optimizer 'adamz'; known optimizers: adamw, sgd"
    """

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        self.kind = kind
        self.name = name
        self.known = tuple(sorted(known))
        self.message = f"unknown {kind} '{name}'; known {kind}s: {', '.join(self.known)}"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


def invalid_value(name: str, value: Any, allowed: str) -> ValueError:
    """The ValueError for ``name=value`` outside ``allowed`` (a phrase such as ``">= 0"``).

    >>> invalid_value("lr", -1.0, ">= 0")
    ValueError('Invalid lr: -1.0; lr must be >= 0')
    """
    return ValueError(f"Invalid {name}: {value!r}; {name} must be {allowed}")
