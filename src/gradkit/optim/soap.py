"""SOAP: Adam in the eigenbasis of Shampoo's Kronecker factors."""

from __future__ import annotations

from gradkit.core.hyperparams import flag, integer
from gradkit.core.transform import GradientTransformation, chain
from gradkit.optim._base import RecipeOptimizer
from gradkit.optim.registry import register_optimizer
from gradkit.transforms.decay import decoupled_weight_decay
from gradkit.transforms.preconditioning import ScaleBySOAP
from gradkit.transforms.scaling import ScaleByLearningRate

__all__ = ["SOAP"]


@register_optimizer(
    "soap", paper="SOAP: Improving and Stabilizing Shampoo using Adam", arxiv="2409.11321"
)
class SOAP(RecipeOptimizer):
    """SOAP: Adam run in the eigenbasis of Shampoo's factors, refreshed every f steps.

    For each matrix parameter with gradient ``G``, bases ``Q_L, Q_R`` (eigenvectors of the
    factors ``L, R``), ``P(X) = Q_L^T X Q_R`` and step ``s = t - 1``::

        t = 1:  L, R <- (1 - sb) G G^T, (1 - sb) G^T G;  Q_L, Q_R <- eigh(L), eigh(R); no move
        t >= 2: every f steps (s = 1 + f, 1 + 2f, ...): Q <- QR(F Q) sorted, v permuted alike
                m <- b1 m + (1 - b1) G
                v <- b2 v + (1 - b2) P(G)^2
                D = P^-1( P(m) / (sqrt(v) + eps) ) * sqrt(1 - b2^s) / (1 - b1^s)
                L <- sb L + (1 - sb) G G^T,   R <- sb R + (1 - sb) G^T G
                p <- (1 - lr * wd) p - lr * D

    ``sb = shampoo_beta``, ``f = precondition_frequency`` (a group hyperparameter, see
    :mod:`gradkit.transforms.preconditioning`). Vectors and scalars (biases, gains) take plain
    Adam with this bias correction (the paper's ``precondition_1d=False``), unless
    ``precondition_1d=True``. A side longer than ``max_preconditioner_dim`` keeps the identity
    basis. Defaults are the paper's (lr 3e-3, betas (0.95, 0.95), shampoo_beta 0.95, eps 1e-8,
    weight decay 0.01, f = 10). bf16 parameters: moments, factors and bases in float32, the step
    cast back. Complex parameters are refused.

    Vyas, Morwani, Zhao, Shapira, Brandfonbrener, Janson & Kakade, "SOAP: Improving and
    Stabilizing Shampoo using Adam", arXiv 2409.11321.
    Recipe: ``chain(ScaleBySOAP, decoupled_weight_decay, ScaleByLearningRate)``.
    """

    hyperparameters = {
        "lr": 3e-3,
        "betas": (0.95, 0.95),
        "shampoo_beta": 0.95,
        "eps": 1e-8,
        "weight_decay": 0.01,
        "precondition_frequency": 10,
    }
    options = (
        integer("max_preconditioner_dim", 10000, low=1),
        flag("precondition_1d", False),
    )

    def recipe(
        self, *, max_preconditioner_dim: int, precondition_1d: bool
    ) -> GradientTransformation:
        return chain(
            ScaleBySOAP(
                max_preconditioner_dim=max_preconditioner_dim, precondition_1d=precondition_1d
            ),
            decoupled_weight_decay(),
            ScaleByLearningRate(),
        )
