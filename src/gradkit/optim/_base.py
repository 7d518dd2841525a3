"""Base class of named optimizers: a recipe (a chain) plus defaults."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from torch import Tensor

from gradkit.core.optimizer import ChainOptimizer
from gradkit.core.transform import GradientTransformation

__all__ = ["RecipeOptimizer"]


class RecipeOptimizer(ChainOptimizer):
    """A named optimizer: subclasses define ``recipe()`` and ``default_hyperparameters``.

    ``__init__`` takes the params and keyword hyperparameters (any not given take the defaults),
    checks them, and builds the chain.
    """

    default_hyperparameters: ClassVar[dict[str, Any]] = {}
    requires_closure: ClassVar[bool] = False

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], **hyperparams: Any):
        unknown = set(hyperparams) - set(self.default_hyperparameters) - {"maximize"}
        if unknown:
            allowed = ", ".join(sorted(self.default_hyperparameters))
            raise TypeError(
                f"{type(self).__name__} got unknown hyperparameter(s) {sorted(unknown)}; "
                f"it takes: {allowed}, maximize"
            )
        defaults = {**self.default_hyperparameters, **hyperparams}
        super().__init__(params, self.recipe(**defaults), defaults)

    def recipe(self, **hyperparams: Any) -> GradientTransformation:
        """The chain of transforms; structural options (e.g. amsgrad) arrive as keywords."""
        raise NotImplementedError
