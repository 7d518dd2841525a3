"""TrAct: AdamW (or SGD) with the first layer's gradient through its inputs' inverse moment."""

from __future__ import annotations

from typing import Any

from torch import nn

from gradkit.core.hyperparams import choice
from gradkit.core.transform import GradientTransformation, chain
from gradkit.optim._layer_hooks import LayerHookOptimizer
from gradkit.optim.registry import register_optimizer
from gradkit.transforms.decay import decoupled_weight_decay, l2_regularization
from gradkit.transforms.moments import Momentum, ScaleByAdam
from gradkit.transforms.scaling import ScaleByLearningRate
from gradkit.transforms.tract import TrActPreconditioner, TrActStatistics, first_layer

__all__ = ["TRACT_BASES", "TrAct"]

#: the first-order rules TrAct's gradient feeds
TRACT_BASES = ("adamw", "sgd")


@register_optimizer(
    "tract",
    paper="TrAct: Making First-layer Pre-Activations Trainable",
    arxiv="2410.23970",
)
class TrAct(LayerHookOptimizer):
    """TrAct on the first layer, then AdamW (``base="adamw"``, default) or SGD (``"sgd"``).

    Build it from the model, so that a hook can see the first layer's inputs::

        opt = TrAct.from_module(model, lr=1e-3)          # the first Linear/Conv2d of the model
        opt = TrAct.from_module(model, layer=model.stem) # or a chosen one

    (``TrAct(params)`` then ``opt.register(model_or_layer)`` is the same.) Per step, with ``X``
    the ``b x n`` input rows of the first layer (patches for a Conv2d)::

        dW <- dW (X^T X / b + tract_lambda I)^-1      (first layer's weight only)
        then AdamW: m, v on the result; p <- (1 - lr wd) p - lr m_hat / (sqrt(v_hat) + eps)
        or SGD: g <- g + wd p; b <- mu b + (1 - dampening) g; p <- p - lr b

    ``tract_lambda`` (default 0.1, the paper's) is a group hyperparameter; ``base`` a
    construction option. Without a registered layer this is plain AdamW / SGD.

    Petersen, Borgelt & Ermon, "TrAct: Making First-layer Pre-Activations Trainable", NeurIPS
    2024, arXiv 2410.23970.
    Recipe: ``chain(TrActPreconditioner, ScaleByAdam, decoupled_weight_decay,
    ScaleByLearningRate)`` or ``chain(TrActPreconditioner, l2_regularization, Momentum,
    ScaleByLearningRate)``.
    """

    hyperparameters = {
        "lr": 1e-3,
        "tract_lambda": 0.1,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 1e-2,
    }
    options = (choice("base", "adamw", TRACT_BASES),)

    preconditioner_type = TrActPreconditioner

    def recipe(self, *, base: str) -> GradientTransformation:
        if base == "sgd":
            return chain(
                TrActPreconditioner(), l2_regularization(), Momentum(), ScaleByLearningRate()
            )
        return chain(
            TrActPreconditioner(), ScaleByAdam(), decoupled_weight_decay(), ScaleByLearningRate()
        )

    @classmethod
    def from_module(
        cls, model: nn.Module, *, layer: nn.Module | None = None, **kwargs: Any
    ) -> TrAct:
        """``TrAct(model.parameters(), **kwargs)`` bound to ``layer`` (default: the first
        ``nn.Linear`` or ``nn.Conv2d`` of ``model``)."""
        opt = cls(model.parameters(), **kwargs)
        opt.register(model if layer is None else layer)
        return opt

    def make_statistics(self, model: nn.Module) -> TrActStatistics:
        """A hook on the first ``nn.Linear``/``nn.Conv2d`` of ``model`` (itself, if it is one)."""
        return TrActStatistics(first_layer(model))
