"""NovoGrad: layer-wise second moments and normalized-gradient momentum."""

from __future__ import annotations

from gradkit.core.transform import GradientTransformation, chain
from gradkit.optim._base import RecipeOptimizer
from gradkit.optim.registry import register_optimizer
from gradkit.transforms.novograd import ScaleByNovoGrad
from gradkit.transforms.scaling import ScaleByLearningRate

__all__ = ["NovoGrad"]


@register_optimizer(
    "novograd",
    paper="Stochastic Gradient Methods with Layer-wise Adaptive Moments for Training of Deep "
    "Networks",
    arxiv="1905.11286",
)
class NovoGrad(RecipeOptimizer):
    """NovoGrad (Algorithm 1 of the paper).

    Per tensor ``l``: ``v_l <- b2 v_l + (1-b2) ||g_l||^2`` (``v_l = ||g_l||^2`` at first);
    ``m_l <- b1 m_l + g_l / (sqrt(v_l) + eps) + wd * w_l`` (``m_l`` = that sum at first);
    ``w_l <- w_l - lr * m_l``.

    The second moment is one scalar per layer, so the state is about half of Adam's; the
    normalized gradient makes it robust to the scale of each layer's gradient. Betas
    ``(0.95, 0.98)`` are the paper's; it has no single learning rate (1e-3 here).

    Ginsburg et al., "Stochastic Gradient Methods with Layer-wise Adaptive Moments for Training
    of Deep Networks", arXiv 1905.11286.
    Recipe: ``chain(ScaleByNovoGrad, ScaleByLearningRate)``.
    """

    hyperparameters = {
        "lr": 1e-3,
        "betas": (0.95, 0.98),
        "eps": 1e-8,
        "weight_decay": 0.0,
    }

    def recipe(self) -> GradientTransformation:
        return chain(ScaleByNovoGrad(), ScaleByLearningRate())
