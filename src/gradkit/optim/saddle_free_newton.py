"""Saddle-free Newton in a Krylov subspace (a closure optimizer)."""

from __future__ import annotations

from gradkit.core.hyperparams import choice, integer
from gradkit.core.transform import GradientTransformation, chain
from gradkit.optim._base import RecipeOptimizer
from gradkit.optim.registry import register_optimizer
from gradkit.transforms.newton import HVP_METHODS, ScaleBySaddleFreeNewton
from gradkit.transforms.scaling import ScaleByLearningRate

__all__ = ["SaddleFreeNewton"]


@register_optimizer(
    "saddle_free_newton",
    paper="Identifying and attacking the saddle point problem in high-dimensional non-convex "
    "optimization",
    arxiv="1406.2572",
)
class SaddleFreeNewton(RecipeOptimizer):
    """Saddle-free Newton: ``x <- x - lr * (|H| + damping I)^-1 g`` in a Krylov subspace.

    ``krylov_dim`` Lanczos steps on the Hessian from the gradient give ``H ~ Q T Q^T``;
    ``|H|`` takes the absolute value of each Ritz value, so directions of negative curvature
    are descended (Newton climbs them and is attracted to saddle points). ``damping > 0`` is
    added to the absolute Ritz values. Curvature products as for ``grad_reg_newton`` (a
    :class:`gradkit.transforms.newton.ModelClosure`, a closure with
    ``backward(create_graph=True)``, or finite differences of closure gradients).

    Dauphin, Pascanu, Gulcehre, Cho, Ganguli & Bengio, "Identifying and attacking the saddle
    point problem in high-dimensional non-convex optimization", NeurIPS 2014, arXiv 1406.2572
    (the paper uses a Krylov subspace of the Hessian too; its damping was chosen by line search).
    Recipe: ``chain(ScaleBySaddleFreeNewton(krylov_dim), ScaleByLearningRate)``.
    """

    hyperparameters = {"lr": 1.0, "damping": 1e-2}
    options = (integer("krylov_dim", 10, low=1), choice("hvp", "auto", HVP_METHODS))
    requires_closure = True
    #: Curvature products come from the closure's gradients (autograd or finite differences), so
    #: the closure must give the loss's true gradient (no other gradient source).
    curvature_from_closure = True

    def recipe(self, *, krylov_dim: int, hvp: str) -> GradientTransformation:
        return chain(ScaleBySaddleFreeNewton(krylov_dim, hvp=hvp), ScaleByLearningRate())

    @property
    def last_stats(self) -> dict[str, float]:
        """The last group step's Lanczos ``iterations`` and smallest Ritz value ``min_ritz``."""
        return dict(self.transform.transforms[0].last_stats)  # type: ignore[attr-defined]
