"""Old module paths of :mod:`gradkit.bench` (before it was organised by stage) keep working.

``import gradkit.bench.task`` (or any other module of the old flat layout) returns the module
at its new place and emits a ``DeprecationWarning`` naming it. The old paths will be removed in
a later release.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

__all__ = ["MOVED", "install"]

#: Old module path -> new module path.
MOVED: dict[str, str] = {
    "gradkit.bench.task": "gradkit.bench.tasks.interface",
    "gradkit.bench.classification": "gradkit.bench.tasks.classification",
    "gradkit.bench.testfunctions": "gradkit.bench.tasks.testfunctions",
    "gradkit.bench.tasks_mnist1d": "gradkit.bench.tasks.builtin.mnist1d",
    "gradkit.bench.tasks_digits": "gradkit.bench.tasks.builtin.digits",
    "gradkit.bench.tasks_charlm": "gradkit.bench.tasks.builtin.charlm",
    "gradkit.bench.optimizers": "gradkit.bench.protocol.optimizers",
    "gradkit.bench.sampler": "gradkit.bench.protocol.sampler",
    "gradkit.bench.stats": "gradkit.bench.protocol.stats",
    "gradkit.bench.tuning": "gradkit.bench.protocol.plan",
    "gradkit.bench.train": "gradkit.bench.execution.train",
    "gradkit.bench.diagnose": "gradkit.bench.execution.diagnose",
    "gradkit.bench.trajectories": "gradkit.bench.execution.trajectories",
    "gradkit.bench.storage": "gradkit.bench.execution.storage",
    "gradkit.bench.workers": "gradkit.bench.execution.workers",
    "gradkit.bench.results": "gradkit.bench.report.results",
    "gradkit.bench.report": "gradkit.bench.report",
    "gradkit.bench.plots": "gradkit.bench.report.plots",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path and loads it as the module at its new place."""

    def find_spec(self, fullname: str, path: object = None, target: object = None):
        new = MOVED.get(fullname)
        if new is None or new == fullname:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved to {new}; the old path will be removed in a later release",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module is the one at its new place."""


def install() -> None:
    """Put the alias finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
