"""Gradient-regularized Newton with approximate Hessians (a closure optimizer)."""

from __future__ import annotations

from gradkit.core.hyperparams import choice, flag, integer, interval
from gradkit.core.transform import GradientTransformation, chain
from gradkit.optim._base import RecipeOptimizer
from gradkit.optim.registry import register_optimizer
from gradkit.transforms.newton import CURVATURES, HVP_METHODS, ScaleByGradRegNewton
from gradkit.transforms.scaling import ScaleByLearningRate

__all__ = ["GradRegNewton"]


@register_optimizer(
    "grad_reg_newton",
    paper="Gradient-Normalized Smoothness for Optimization with Approximate Hessians",
    arxiv="2506.13710",
)
class GradRegNewton(RecipeOptimizer):
    """Gradient-regularized Newton: ``x <- x - lr * (H~ + sqrt(L * |g|) I)^-1 g``.

    ``H~`` (construction option ``hessian``): ``"exact"`` (the Hessian), ``"gauss_newton"``,
    ``"fisher"`` (empirical Fisher) or ``"diagonal"`` (Hutchinson estimate of the Hessian's
    diagonal from ``diag_samples`` Rademacher probes, floored at 0). The damped system is
    solved matrix-free by conjugate gradient on the curvature operators (at most
    ``cg_max_iter`` products, relative residual ``cg_tol``; stops at negative curvature).
    ``L`` (a group hyperparameter) is the regularization constant; ``lr`` is 1 in the paper.
    ``|g|`` is the gradient norm over the param group; each group is solved on its own.
    ``weight_decay`` ``mu`` minimises ``f + mu/2 |x|^2``: ``mu x`` is added to the gradient and
    ``mu I`` to every curvature model (so Gauss-Newton and Fisher models see the regulariser).

    ``adaptive=True``: the paper's adaptive search instead of a fixed ``L``: ``lambda = |g| /
    gamma``, a step is accepted when ``f(x) - f(x+) >= |g(x+)|^2 / (8 lambda)`` (then ``gamma``
    doubles for the next step), else ``gamma`` halves and the step is recomputed (one closure
    call per trial, the curvature model built once: a Krylov basis of ``cg_max_iter`` Lanczos
    steps, ``cg_tol`` unused). ``L`` sets the first ``gamma = sqrt(|g_0| / L)``; ``gamma`` is
    state (``state_dict``). Read from the authors' code (epfml/grad-norm-smooth), not the paper.

    Needs a closure. Curvature products come from a
    :class:`gradkit.transforms.newton.ModelClosure` (model, loss and batch: any ``hessian``),
    or a plain closure that called ``loss.backward(create_graph=True)`` (exact Hessian
    products), or a plain closure (central finite differences of closure gradients, two
    closure calls per product). See docs/second_order.md.

    Semenov, Jaggi & Doikov, "Gradient-Normalized Smoothness for Optimization with Approximate
    Hessians", 2025, arXiv 2506.13710; the ``sqrt(L |g|)`` regularization: Mishchenko,
    arXiv 2112.02089, and Doikov & Nesterov, arXiv 2112.02952.
    Recipe: ``chain(ScaleByGradRegNewton(hessian, ...), ScaleByLearningRate)``.
    """

    hyperparameters = {"lr": 1.0, "L": 1.0, "weight_decay": 0.0}
    options = (
        choice("hessian", "exact", CURVATURES),
        integer("cg_max_iter", 20, low=1),
        interval("cg_tol", 1e-4, 0.0, low_open=True),
        choice("hvp", "auto", HVP_METHODS),
        integer("diag_samples", 8, low=1),
        integer("seed", 0, low=0),
        flag("adaptive", False),
    )
    requires_closure = True
    #: Curvature products come from the closure's gradients (autograd or finite differences), so
    #: the closure must give the loss's true gradient (no other gradient source).
    curvature_from_closure = True

    def recipe(
        self,
        *,
        hessian: str,
        cg_max_iter: int,
        cg_tol: float,
        hvp: str,
        diag_samples: int,
        seed: int,
        adaptive: bool,
    ) -> GradientTransformation:
        return chain(
            ScaleByGradRegNewton(
                hessian,
                cg_max_iter=cg_max_iter,
                cg_tol=cg_tol,
                hvp=hvp,
                diag_samples=diag_samples,
                seed=seed,
                adaptive=adaptive,
            ),
            ScaleByLearningRate(),
        )

    @property
    def last_stats(self) -> dict[str, float]:
        """The last group step's ``lambda``, CG ``iterations`` and curvature ``matvecs``."""
        return dict(self.transform.transforms[0].last_stats)  # type: ignore[attr-defined]
