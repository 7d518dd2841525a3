"""⊥AdamW: AdamW on gradients made orthogonal to the weights (⊥Grad)."""

from __future__ import annotations

from gradkit.core.hyperparams import flag
from gradkit.core.transform import GradientTransformation, chain
from gradkit.optim._base import RecipeOptimizer
from gradkit.optim.registry import register_optimizer
from gradkit.transforms.decay import decoupled_weight_decay
from gradkit.transforms.moments import ScaleByAdam
from gradkit.transforms.orthogonal_gradient import OrthogonalGradient
from gradkit.transforms.scaling import ScaleByLearningRate

__all__ = ["PerpAdamW"]


@register_optimizer(
    "perp_adamw", paper="Grokking at the Edge of Numerical Stability", arxiv="2501.04697"
)
class PerpAdamW(RecipeOptimizer):
    """⊥AdamW: AdamW whose gradient first loses its component along the weights, per tensor.

    ``g_perp = g - (w.g / (w.w + 1e-30)) w``, rescaled to ``||g||`` (``rescale=True``, as the
    authors' code; ``rescale=False`` is the paper's equation); then AdamW on ``g_perp``:
    ``m <- b1 m + (1-b1) g_perp``; ``v <- b2 v + (1-b2) g_perp^2``;
    ``w <- (1 - lr wd) w - lr (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)``. The projection uses
    the weights before the step, as the authors' wrapper projects ``.grad`` before AdamW runs.
    Prevents "naive loss minimization" (growing the weights along themselves to scale the
    logits), which the paper finds delays grokking and leads to Softmax Collapse; it reports
    grokking without weight decay with it, hence ``weight_decay = 0`` by default (AdamW's
    ``betas``, ``eps`` and ``lr`` otherwise).

    Prieto, Barsbey, Mediano, Birdal, "Grokking at the Edge of Numerical Stability", ICLR 2025,
    arXiv 2501.04697. Recipe: ``chain(OrthogonalGradient(rescale), ScaleByAdam,
    decoupled_weight_decay, ScaleByLearningRate)``.
    """

    hyperparameters = {
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 0.0,
        "amsgrad": False,
    }
    options = (flag("rescale", True),)

    def recipe(self, *, rescale: bool) -> GradientTransformation:
        return chain(
            OrthogonalGradient(rescale=rescale),
            ScaleByAdam(),
            decoupled_weight_decay(),
            ScaleByLearningRate(),
        )
