"""Importing the packages of the ``compare`` extra where only a few features need them."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["import_optional"]


def import_optional(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise ImportError naming the extra that brings it.

    >>> import_optional("no_such_module_here", "testing")
    Traceback (most recent call last):
    ...
    ImportError: testing needs no_such_module_here: pip install "gradkit[compare]"
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f'{purpose} needs {module.split(".")[0]}: pip install "gradkit[compare]"'
        ) from None
