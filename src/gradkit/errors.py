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
    """The registry form of a name: lower case, ``-`` and spaces as ``_``."""
    if not isinstance(name, str):
        raise TypeError(f"a name must be a string, got {type(name).__name__}")
    return "_".join(name.strip().lower().replace("-", " ").replace("_", " ").split())


class UnknownNameError(ValueError):
    """A name that is not registered; ``known`` lists the names that are."""

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        self.kind = kind
        self.name = name
        self.known = tuple(sorted(known))
        super().__init__(f"unknown {kind} '{name}'; known {kind}s: {', '.join(self.known)}")


def invalid_value(name: str, value: Any, allowed: str) -> ValueError:
    """The ValueError for ``name=value`` outside ``allowed`` (a phrase such as ``">= 0"``)."""
    return ValueError(f"Invalid {name}: {value!r}; {name} must be {allowed}")
