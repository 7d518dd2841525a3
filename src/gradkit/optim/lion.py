"""Lion and Lion-kappa: sign (or grad kappa) of the interpolated momentum, decoupled decay."""

from __future__ import annotations

from gradkit.core.hyperparams import choice
from gradkit.core.transform import GradientTransformation, chain
from gradkit.optim._base import RecipeOptimizer
from gradkit.optim.registry import register_optimizer
from gradkit.transforms.decay import decoupled_weight_decay
from gradkit.transforms.lion import KAPPAS, ScaleByLion
from gradkit.transforms.scaling import ScaleByLearningRate

__all__ = ["Lion", "LionKappa"]


@register_optimizer(
    "lion",
    paper="Symbolic Discovery of Optimization Algorithms (analysis: Lion Secretly Solves "
    "Constrained Optimization: As Lyapunov Predicts, arXiv 2310.05898)",
    arxiv="2302.06675",
)
class Lion(RecipeOptimizer):
    """Lion (EvoLved Sign Momentum).

    ``c = b1 m + (1-b1) g``; ``p <- (1 - lr * wd) p - lr * sign(c)``; ``m <- b2 m + (1-b2) g``.

    One state buffer per parameter (half of Adam's memory). Every step moves each coordinate by
    exactly ``lr``, so use a learning rate 3-10x smaller than AdamW's and a weight decay that
    much larger. Chen, Liu, Liang & Liu show Lion minimizes the loss subject to
    ``||p||_inf <= 1 / wd``.

    Chen et al., "Symbolic Discovery of Optimization Algorithms", arXiv 2302.06675.
    Recipe: ``chain(ScaleByLion("sign"), decoupled_weight_decay, ScaleByLearningRate)``.
    """

    hyperparameters = {"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0}

    def recipe(self) -> GradientTransformation:
        return chain(ScaleByLion("sign"), decoupled_weight_decay(), ScaleByLearningRate())


@register_optimizer(
    "lion_kappa",
    paper="Lion Secretly Solves Constrained Optimization: As Lyapunov Predicts",
    arxiv="2310.05898",
)
class LionKappa(RecipeOptimizer):
    """Lion-kappa: Lion with ``sign`` replaced by the gradient of a convex function kappa.

    ``c = b1 m + (1-b1) g``; ``p <- (1 - lr * wd) p - lr * grad_kappa(c)``;
    ``m <- b2 m + (1-b2) g``. ``kappa``: ``"sign"`` (l1 norm: Lion), ``"huber"``
    (``clamp(c, -1, 1)``) or ``"l2"`` (``c / ||c||`` per tensor). ``kappa`` is structural: it is
    fixed when the optimizer is built.

    Per the paper, Lion-kappa minimizes ``f(x) + kappa*(x)`` (kappa* the convex conjugate); with
    decoupled weight decay the iterates stay in ``||x||_inf <= 1 / wd`` for these kappas.

    Chen, Liu, Liang & Liu, "Lion Secretly Solves Constrained Optimization: As Lyapunov
    Predicts", ICLR 2024, arXiv 2310.05898.
    Recipe: ``chain(ScaleByLion(kappa), decoupled_weight_decay, ScaleByLearningRate)``.
    """

    hyperparameters = {"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0}
    options = (choice("kappa", "sign", KAPPAS),)

    def recipe(self, *, kappa: str) -> GradientTransformation:
        return chain(ScaleByLion(kappa), decoupled_weight_decay(), ScaleByLearningRate())
