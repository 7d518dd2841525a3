"""Shampoo: Kronecker-factored inverse-root preconditioning, with grafting."""

from __future__ import annotations

from gradkit.core.hyperparams import choice, flag, integer
from gradkit.core.transform import GradientTransformation, chain
from gradkit.optim._base import RecipeOptimizer
from gradkit.optim.registry import register_optimizer
from gradkit.transforms.decay import decoupled_weight_decay
from gradkit.transforms.moments import Momentum
from gradkit.transforms.preconditioning import GRAFTS, Grafting, ShampooPreconditioner
from gradkit.transforms.scaling import ScaleByLearningRate

__all__ = ["Shampoo"]


@register_optimizer(
    "shampoo",
    paper="Shampoo: Preconditioned Stochastic Tensor Optimization (grafting: Scalable Second "
    "Order Optimization for Deep Learning, arXiv 2002.09018)",
    arxiv="1802.09568",
)
class Shampoo(RecipeOptimizer):
    """Shampoo with layer-wise grafting, momentum and decoupled weight decay.

    For each matrix parameter (a tensor seen as ``(shape[0], prod(shape[1:]))``) with gradient
    ``G``::

        L <- beta L + (1 - beta) G G^T,   R <- beta R + (1 - beta) G^T G   (beta = 1: L += G G^T)
        every f steps:  IL = (L + eps I)^(-1/4),  IR = (R + eps I)^(-1/4)   (eigendecomposition)
        D = IL G IR
        D <- D * ||A|| / ||D||          (grafting: A = Adam's / AdaGrad's / SGD's step on G)
        b <- mu b + (1 - dampening) D   (momentum; b = D on the first step)
        p <- (1 - lr * wd) p - lr * b

    ``beta = shampoo_beta`` (default 1: the paper's sums), ``eps = matrix_eps``,
    ``f = precondition_frequency`` (a group hyperparameter: see
    :mod:`gradkit.transforms.preconditioning`). The roots are recomputed on steps
    ``1, 1 + f, 1 + 2f, ...``. Vectors and scalars (biases, gains) take the diagonal fallback
    ``g / sqrt(v + eps)`` of the same statistic, unless ``precondition_1d=True`` (then a vector
    gets the full-matrix ``(gg^T-sum + eps I)^(-1/2)``, as in the paper's order-1 case). A side
    longer than ``max_preconditioner_dim`` is not preconditioned and the other side's root
    becomes ``-1/2``.

    ``graft`` (construction option): ``"adam"`` (default: the step size of Adam without
    momentum, ``graft_beta2``, ``graft_eps``), ``"adagrad"``, ``"sgd"`` or ``"none"`` (the
    paper's plain rule). With ``graft="none", shampoo_beta=1, momentum=0,
    precondition_1d=True`` and ``f = 1`` this is Algorithm 1 of the paper.

    Defaults: momentum 0.9 with dampening 0.9 (an exponential average, so that the grafted step
    keeps Adam's size). bf16 parameters: statistics and roots in float32, the step cast back.
    Complex parameters are refused.

    Gupta, Koren & Singer, "Shampoo: Preconditioned Stochastic Tensor Optimization", ICML 2018,
    arXiv 1802.09568; grafting as in Anil, Gupta, Koren, Regan & Singer, "Scalable Second Order
    Optimization for Deep Learning", arXiv 2002.09018.
    Recipe: ``chain(Grafting(ShampooPreconditioner), Momentum, decoupled_weight_decay,
    ScaleByLearningRate)``.
    """

    hyperparameters = {
        "lr": 1e-3,
        "shampoo_beta": 1.0,
        "matrix_eps": 1e-6,
        "precondition_frequency": 10,
        "momentum": 0.9,
        "dampening": 0.9,
        "weight_decay": 0.0,
        "graft_beta2": 0.999,
        "graft_eps": 1e-8,
    }
    options = (
        choice("graft", "adam", GRAFTS),
        integer("max_preconditioner_dim", 8192, low=1),
        flag("precondition_1d", False),
    )

    def recipe(
        self, *, graft: str, max_preconditioner_dim: int, precondition_1d: bool
    ) -> GradientTransformation:
        direction = ShampooPreconditioner(
            max_preconditioner_dim=max_preconditioner_dim, precondition_1d=precondition_1d
        )
        return chain(
            Grafting(direction, graft),
            Momentum(),
            decoupled_weight_decay(),
            ScaleByLearningRate(),
        )
