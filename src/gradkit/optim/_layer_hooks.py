"""Named optimizers whose preconditioner reads layer statistics that hooks on the model collect
(K-FAC's Kronecker factors, TrAct's input second moment)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from torch import nn

from gradkit.core.transform import GradientTransformation
from gradkit.optim._base import RecipeOptimizer

__all__ = ["LayerHookOptimizer"]


class LayerHookOptimizer(RecipeOptimizer):
    """A recipe whose transform of type ``preconditioner_type`` reads ``statistics``: an object
    with hooks on the model (``remove()``, ``clear()``) that :meth:`register` puts on and that
    is cleared after every step, taken or skipped. Subclasses define
    :meth:`make_statistics`."""

    #: the chain's transform that reads the statistics
    preconditioner_type: ClassVar[type[GradientTransformation]]

    def make_statistics(self, model: nn.Module) -> Any:
        """The hooks' statistics object for ``model``."""
        raise NotImplementedError

    @property
    def preconditioner(self) -> Any:
        """The chain's transform of type ``preconditioner_type``."""
        kind = self.preconditioner_type
        return next(t for t in self.transform.transforms if isinstance(t, kind))

    @property
    def statistics(self) -> Any:
        """The hooks' statistics, or None before :meth:`register`."""
        return self.preconditioner.statistics

    def register(self, model: nn.Module) -> Any:
        """Put the hooks on ``model`` (replacing earlier ones); call before the first step."""
        if self.statistics is not None:
            self.statistics.remove()
        stats = self.make_statistics(model)
        self.preconditioner.statistics = stats
        return stats

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        try:
            return super().step(closure)
        finally:
            if self.statistics is not None:
                self.statistics.clear()
