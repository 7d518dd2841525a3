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
    checks them, and builds the chain. ``fused`` selects the flat fast path (see
    :class:`~gradkit.core.optimizer.ChainOptimizer`; default: on for CUDA params when the chain
    allows it).
    """

    default_hyperparameters: ClassVar[dict[str, Any]] = {}
    requires_closure: ClassVar[bool] = False

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        fused: bool | str | None = None,
        **hyperparams: Any,
    ):
        chain_fused = fused
        if "fused" in self.default_hyperparameters:
            # The recipe has its own fast path (e.g. Muon's compiled update) chosen by ``fused``;
            # the generic flat path does not apply to it.
            if fused is not None:
                hyperparams["fused"] = fused
            chain_fused = False
        unknown = set(hyperparams) - set(self.default_hyperparameters) - {"maximize"}
        if unknown:
            allowed = ", ".join(sorted(self.default_hyperparameters))
            raise TypeError(
                f"{type(self).__name__} got unknown hyperparameter(s) {sorted(unknown)}; "
                f"it takes: {allowed}, maximize"
            )
        defaults = {**self.default_hyperparameters, **hyperparams}
        super().__init__(params, self.recipe(**defaults), defaults, fused=chain_fused)

    def recipe(self, **hyperparams: Any) -> GradientTransformation:
        """The chain of transforms; structural options (e.g. amsgrad) arrive as keywords."""
        raise NotImplementedError
