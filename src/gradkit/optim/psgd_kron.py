"""PSGD Kron: preconditioned SGD with Kronecker-factored preconditioners on a Lie group."""

from __future__ import annotations

from gradkit.core.hyperparams import integer, interval
from gradkit.core.transform import GradientTransformation, chain
from gradkit.optim._base import RecipeOptimizer
from gradkit.optim.registry import register_optimizer
from gradkit.transforms.decay import decoupled_weight_decay
from gradkit.transforms.psgd_kron import ScaleByPSGDKron
from gradkit.transforms.scaling import ScaleByLearningRate

__all__ = ["PSGDKron"]


@register_optimizer(
    "psgd_kron",
    paper="Preconditioned Stochastic Gradient Descent (Kronecker factors on a Lie group: "
    "Preconditioner on Matrix Lie Group for SGD, arXiv 1809.10232)",
    arxiv="1512.04202",
)
class PSGDKron(RecipeOptimizer):
    """PSGD Kron: ``p <- (1 - lr * wd) p - lr * clip(P m_hat)``.

    ``m_hat`` the bias-corrected EMA momentum of the gradient (``momentum``),
    ``P = (Q_1^T Q_1) kron (Q_2^T Q_2)`` with upper-triangular (or diagonal) ``Q_i`` fitted every
    ``precondition_frequency`` steps (a group hyperparameter) by one Lie-group step of size
    ``precondition_lr`` on Li's criterion ``E[h^T P h + v^T P^-1 v]`` from ``h = m_hat`` and a
    Gaussian probe ``v`` (torch's global generator); ``clip`` scales the step to RMS <= 1.1.
    The update rule and the fit are spelled out in :mod:`gradkit.transforms.psgd_kron`.

    Tensors are seen as ``(shape[0], prod(shape[1:]))`` matrices (two factors); vectors and
    scalars (biases, gains) have one diagonal factor, the declared fallback, which is PSGD's own
    diagonal preconditioner. A side longer than ``max_size_triangular`` gets a diagonal factor.
    bf16 parameters: momentum and factors in float32, the step cast back. Complex parameters are
    refused. The default ``precondition_frequency=1`` refits every step (kron_torch's default
    schedule does so for the first 500 steps, then ever more rarely, down to 1 step in 33).

    Li, "Preconditioned Stochastic Gradient Descent", arXiv 1512.04202; Li, "Preconditioner on
    Matrix Lie Group for SGD", arXiv 1809.10232.
    Recipe: ``chain(ScaleByPSGDKron, decoupled_weight_decay, ScaleByLearningRate)``.
    """

    hyperparameters = {
        "lr": 1e-3,
        "momentum": 0.9,
        "precondition_lr": 0.1,
        "precondition_frequency": 1,
        "weight_decay": 0.0,
    }
    options = (
        integer("max_size_triangular", 8192, low=1),
        interval("precondition_init_scale", 1.0, 0.0, low_open=True),
    )

    def recipe(
        self, *, max_size_triangular: int, precondition_init_scale: float
    ) -> GradientTransformation:
        return chain(
            ScaleByPSGDKron(
                max_size_triangular=max_size_triangular,
                precondition_init_scale=precondition_init_scale,
            ),
            decoupled_weight_decay(),
            ScaleByLearningRate(),
        )
