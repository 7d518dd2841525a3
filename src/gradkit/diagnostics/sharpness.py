"""Sharpness (the top Hessian eigenvalue) tracked during training against the stability edge 2/lr.

Gradient descent with step size ``lr`` on a quadratic with Hessian ``H`` is stable only if
``lambda_max(H) <= 2 / lr``. Full-batch training of neural networks drives the sharpness up to
this edge and then hovers at it ("edge of stability": Cohen et al., "Gradient Descent on Neural
Networks Typically Occurs at the Edge of Stability", arXiv 2103.00065); for SGD the linear
stability of a minimum is governed by related sharpness measures (Wu & Su, "The Implicit
Regularization of Dynamical Stability in Stochastic Gradient Descent"; Dexter et al.,
"A Precise Characterization of SGD Stability Using Loss Surface Geometry").

:class:`SharpnessTracker` is a callback for any training loop::

    tracker = SharpnessTracker(model, loss_fn, (x, y), every=50)
    for step in range(steps):
        ...; opt.step()
        tracker.update(step, lr=opt)        # or lr=0.1
    plot_sharpness(tracker.history, "sharpness.png")

Each measurement runs Lanczos (:func:`gradkit.curvature.top_eigenpairs`), warm-started from the
previous top eigenvector, which typically halves the Hessian-vector products per measurement.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gradkit.curvature import GaussNewtonOperator, HessianOperator, top_eigenpairs
from gradkit.curvature._utils import check_positive, check_positive_int
from gradkit.curvature.operators import CurvatureOperator
from gradkit.diagnostics._plotting import new_figure, save_figure
from gradkit.errors import invalid_value

LossFn = Callable[[Tensor, Tensor], Tensor]
_OPERATORS: dict[str, type[CurvatureOperator]] = {
    "hessian": HessianOperator,
    "gauss_newton": GaussNewtonOperator,
}


@dataclass
class SharpnessRecord:
    """One measurement: ``sharpness`` = top eigenvalue(s) at ``step``; ``threshold`` = 2 / lr."""

    step: int
    sharpness: float
    eigenvalues: list[float]
    lr: float | None
    threshold: float | None
    num_matvecs: int


def _lr_of(lr: float | torch.optim.Optimizer | None) -> float | None:
    if lr is None:
        return None
    if isinstance(lr, torch.optim.Optimizer):
        lr = float(lr.param_groups[0]["lr"])
    check_positive("lr", lr)
    return float(lr)


class _EvalMode:
    def __init__(self, model: nn.Module, enabled: bool) -> None:
        self.model, self.enabled, self.was_training = model, enabled, model.training

    def __enter__(self) -> None:
        if self.enabled:
            self.model.eval()

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.model.train(self.was_training)


def sharpness(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    k: int = 1,
    params: Sequence[Tensor] | None = None,
    max_samples: int | None = None,
    tol: float = 1e-3,
    max_iter: int = 100,
    seed: int = 0,
    operator: str = "hessian",
    eval_mode: bool = True,
) -> Tensor:
    """The top-``k`` eigenvalues (largest first) of the loss Hessian (or Gauss-Newton matrix)."""
    op = _make_operator(model, loss_fn, data, params, max_samples, operator)
    with _EvalMode(model, eval_mode):
        vals, _ = top_eigenpairs(op, k=k, tol=tol, max_iter=max_iter, seed=seed)
    return vals


def _check_operator(operator: object) -> None:
    if operator not in _OPERATORS:
        raise invalid_value("operator", operator, f"one of {tuple(_OPERATORS)}")


def _make_operator(model, loss_fn, data, params, max_samples, operator) -> CurvatureOperator:
    _check_operator(operator)
    return _OPERATORS[operator](model, loss_fn, data, params=params, max_samples=max_samples)


class SharpnessTracker:
    """Training-loop callback that records the sharpness every ``every`` steps.

    Args:
        model, loss_fn, data: as for :class:`gradkit.curvature.HessianOperator`; ``data`` is the
            fixed batch (or loader) the sharpness is measured on.
        every: measure when ``step % every == 0``.
        k: number of top eigenvalues to record (``sharpness`` is the first).
        params, max_samples: passed to the operator.
        tol, max_iter: Lanczos stopping rule (relative Ritz residual, product budget).
        warm_start: start Lanczos from the previous top eigenvector.
        operator: ``"hessian"`` or ``"gauss_newton"``.
        eval_mode: measure with the model in eval mode (restored afterwards).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Any,
        every: int = 50,
        k: int = 1,
        params: Sequence[Tensor] | None = None,
        max_samples: int | None = None,
        tol: float = 1e-3,
        max_iter: int = 100,
        warm_start: bool = True,
        operator: str = "hessian",
        eval_mode: bool = True,
        seed: int = 0,
    ) -> None:
        check_positive_int("every", every)
        check_positive_int("k", k)
        check_positive_int("max_samples", max_samples, allow_none=True)
        check_positive("tol", tol)
        check_positive_int("max_iter", max_iter)
        _check_operator(operator)
        self.model, self.loss_fn, self.data = model, loss_fn, data
        self.every, self.k = every, k
        self.params, self.max_samples = params, max_samples
        self.tol, self.max_iter, self.warm_start = tol, max_iter, warm_start
        self.operator, self.eval_mode, self.seed = operator, eval_mode, seed
        self.history: list[SharpnessRecord] = []
        self._prev_vec: list[Tensor] | None = None

    def measure(
        self, step: int, lr: float | torch.optim.Optimizer | None = None
    ) -> SharpnessRecord:
        """Measure now, whatever the step, and append to ``history``."""
        lr_val = _lr_of(lr)
        op = _make_operator(
            self.model, self.loss_fn, self.data, self.params, self.max_samples, self.operator
        )
        init = None
        if self.warm_start and self._prev_vec is not None:
            # a small random admixture keeps the Krylov space from collapsing when the previous
            # vector is an exact eigenvector (e.g. on a quadratic)
            gen = torch.Generator().manual_seed(self.seed + len(self.history))
            init = []
            for t in self._prev_vec:
                r = torch.randn(t.shape, generator=gen, dtype=torch.float64)
                init.append(t + 1e-2 * r.to(dtype=t.dtype, device=t.device) / op.dim**0.5)
        with _EvalMode(self.model, self.eval_mode):
            vals, vecs = top_eigenpairs(
                op, k=self.k, tol=self.tol, max_iter=self.max_iter, seed=self.seed, init=init
            )
        self._prev_vec = vecs[0]
        rec = SharpnessRecord(
            step=int(step),
            sharpness=float(vals[0]),
            eigenvalues=[float(v) for v in vals],
            lr=lr_val,
            threshold=None if lr_val is None else 2.0 / lr_val,
            num_matvecs=op.num_matvecs,
        )
        self.history.append(rec)
        return rec

    def update(
        self, step: int, lr: float | torch.optim.Optimizer | None = None
    ) -> SharpnessRecord | None:
        """Measure if ``step % every == 0``; return the new record or None."""
        if step % self.every != 0:
            return None
        return self.measure(step, lr)

    __call__ = update


def plot_sharpness(
    history: Sequence[SharpnessRecord], path: str | Path, title: str | None = None
) -> Path:
    """Plot sharpness against step with the stability edge 2/lr (dashed); save to ``path``."""
    if not history:
        raise ValueError("history is empty: call tracker.update(step, lr) during training first")
    fig, ax = new_figure()
    steps = [r.step for r in history]
    ax.plot(steps, [r.sharpness for r in history], marker="o", ms=3, label=r"$\lambda_{\max}$")
    kmax = max(len(r.eigenvalues) for r in history)
    for j in range(1, kmax):
        vals = [r.eigenvalues[j] if len(r.eigenvalues) > j else float("nan") for r in history]
        ax.plot(
            steps,
            vals,
            color="C0",
            alpha=0.35,
            lw=0.8,
            label=r"$\lambda_{2..k}$" if j == 1 else None,
        )
    if any(r.threshold is not None for r in history):
        th = [r.threshold if r.threshold is not None else float("nan") for r in history]
        ax.plot(steps, th, "k--", label="2 / lr")
    return save_figure(
        fig, ax, path, "step", "sharpness", title or "Sharpness vs the stability edge 2/lr"
    )
