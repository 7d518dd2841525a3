"""Newton-type transforms on the curvature engine: gradient-regularized Newton and
saddle-free Newton.

Both need curvature products at the current parameters, which they take from the step's
closure (so both set ``needs_closure``). Where the products come from:

1. A :class:`ModelClosure` (a closure that also carries ``model``, ``loss_fn`` and the batch):
   the curvature operators of :mod:`gradkit.curvature` over the group's parameters
   (``HessianOperator``, ``GaussNewtonOperator``, ``FisherOperator``). The only way to get
   Gauss-Newton or empirical-Fisher curvature: these need the model outputs and targets.
2. A plain closure that called ``loss.backward(create_graph=True)``: exact Hessian-vector
   products by double backward through the gradients it left in ``p.grad``.
3. A plain closure that called ``loss.backward()``: central finite differences of closure
   gradients, ``H v ~ (g(x + h v) - g(x - h v)) / (2 h)`` with
   ``h = eps^(1/3) (1 + |x|) / |v|`` (two closure calls per product; the parameters and their
   gradients are restored exactly afterwards). Accurate to about ``eps^(2/3)`` relative.

``hvp="autograd"`` refuses the third path (a clear error instead of a silent approximation);
``hvp="finite_difference"`` always takes it. The Krylov solves run in float32 for bf16/fp16
parameters (the products keep the parameters' precision); float64 elsewhere where the
parameters are float64. Each param group is solved on its own (curvature blocks between
groups are ignored). Complex parameters are refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from gradkit.core.hyperparams import interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList
from gradkit.curvature._utils import flatten, unflatten
from gradkit.curvature.operators import FisherOperator, GaussNewtonOperator, HessianOperator
from gradkit.curvature.solvers import conjugate_gradient, krylov_basis, lanczos_abs_solve

__all__ = [
    "CURVATURES",
    "HVP_METHODS",
    "ModelClosure",
    "ScaleByGradRegNewton",
    "ScaleBySaddleFreeNewton",
]

CURVATURES = ("exact", "gauss_newton", "fisher", "diagonal")
HVP_METHODS = ("auto", "autograd", "finite_difference")

FlatMatvec = Callable[[Tensor], Tensor]


class ModelClosure:
    """A closure for ``optimizer.step`` that also carries what curvature operators need.

    Calling it does what a closure does: ``optimizer.zero_grad()`` (if ``optimizer`` is
    given), ``loss = loss_fn(model(inputs), targets)``, ``loss.backward()``, return ``loss``.
    Newton-type optimizers read ``model``, ``loss_fn`` and ``(inputs, targets)`` from it to
    build Hessian, Gauss-Newton or empirical-Fisher operators on that batch.

    ``loss_fn(outputs, targets)`` must return the mean loss of the batch (per-example losses
    are what the empirical Fisher needs: a sum-reduced loss gives a wrong Fisher).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        inputs: Tensor,
        targets: Tensor,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable as loss_fn(outputs, targets) -> scalar")
        self.model, self.loss_fn = model, loss_fn
        self.inputs, self.targets = inputs, targets
        self.optimizer = optimizer

    @property
    def batch(self) -> tuple[Tensor, Tensor]:
        return self.inputs, self.targets

    def __call__(self) -> Tensor:
        if self.optimizer is not None:
            self.optimizer.zero_grad()
        loss = self.loss_fn(self.model(self.inputs), self.targets)
        loss.backward()
        return loss


# ---------------------------------------------------------------------------- products
def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _operator_matvec(op: Any, params: TensorList, work: torch.dtype) -> FlatMatvec:
    def mv(v: Tensor) -> Tensor:
        with torch.enable_grad():
            parts = op.matvec([t.to(p.dtype) for t, p in zip(unflatten(v, params), params)])
        return flatten(parts).to(work)

    return mv


def _graph_matvec(params: TensorList, grads: TensorList, work: torch.dtype) -> FlatMatvec:
    """Exact ``H v`` by double backward through gradients built with ``create_graph=True``."""
    idx = [i for i, g in enumerate(grads) if g.requires_grad]

    def mv(v: Tensor) -> Tensor:
        vs = unflatten(v, params)
        with torch.enable_grad():
            hv = torch.autograd.grad(
                [grads[i] for i in idx],
                params,
                grad_outputs=[vs[i].to(grads[i].dtype) for i in idx],
                retain_graph=True,
                allow_unused=True,
            )
        return flatten([torch.zeros_like(p) if h is None else h for h, p in zip(hv, params)]).to(
            work
        )

    return mv


class _FiniteDifferenceHessian:
    """``H v`` by central differences of closure gradients at ``x +- h v``."""

    def __init__(self, params: TensorList, closure: Callable[[], Any], work: torch.dtype) -> None:
        self.params, self.closure, self.work = params, closure, work
        self.x0 = [p.detach().clone() for p in params]
        self.xnorm = float(flatten(self.x0).double().norm())
        self.step_eps = torch.finfo(params[0].dtype).eps ** (1.0 / 3.0)

    def _grad_at(self, v: list[Tensor], h: float) -> Tensor:
        for p, x, d in zip(self.params, self.x0, v):
            p.copy_(x + h * d.to(p.dtype))
        with torch.enable_grad():
            self.closure()
        return flatten(
            [torch.zeros_like(p) if p.grad is None else p.grad.detach() for p in self.params]
        ).to(self.work)

    def __call__(self, v: Tensor) -> Tensor:
        vn = float(v.norm())
        if vn == 0.0 or not math.isfinite(vn):
            return torch.zeros_like(v) if vn == 0.0 else v * float("nan")
        h = self.step_eps * (1.0 + self.xnorm) / vn
        vs = unflatten(v, self.params)
        try:
            gp = self._grad_at(vs, h)
            gm = self._grad_at(vs, -h)
        finally:
            for p, x in zip(self.params, self.x0):
                p.copy_(x)
        return (gp - gm) / (2.0 * h)


def _restore_grads(params: TensorList, grads: list[Tensor]) -> None:
    for p, g in zip(params, grads):
        if p.grad is None or p.grad.shape != g.shape:
            p.grad = g
        else:
            p.grad.detach_()
            p.grad.copy_(g)


def hessian_products(
    params: TensorList,
    grads: TensorList,
    ctx: StepContext,
    *,
    curvature: str = "exact",
    hvp: str = "auto",
    name: str = "this optimizer",
) -> tuple[FlatMatvec, Callable[[], None]]:
    """The curvature products for a Newton-type step and a function that undoes the side
    effects on ``p.grad`` (see the module docstring for where the products come from).

    Returns ``(matvec on flat work-dtype vectors, finish)``; call ``finish()`` after the solve.
    """
    work = _work_dtype(params[0].dtype)
    closure = ctx.closure
    saved = [g.detach().clone() for g in grads]  # the closure may zero p.grad in place

    def finish() -> None:
        _restore_grads(params, saved)

    if curvature in ("gauss_newton", "fisher"):
        if not isinstance(closure, ModelClosure):
            raise TypeError(
                f"{name} with hessian={curvature!r} needs the model outputs and targets: step "
                "with a gradkit.transforms.newton.ModelClosure(model, loss_fn, inputs, targets, "
                "optimizer) instead of a plain closure"
            )
        cls = GaussNewtonOperator if curvature == "gauss_newton" else FisherOperator
        with torch.enable_grad():
            op = cls(closure.model, closure.loss_fn, closure.batch, params=params)
        return _operator_matvec(op, params, work), finish
    if hvp != "finite_difference":
        if isinstance(closure, ModelClosure):
            with torch.enable_grad():
                op = HessianOperator(closure.model, closure.loss_fn, closure.batch, params=params)
            return _operator_matvec(op, params, work), finish
        if any(g.requires_grad for g in grads):
            return _graph_matvec(params, list(grads), work), finish
        if hvp == "autograd":
            raise RuntimeError(
                f"{name} with hvp='autograd' needs Hessian-vector products by autograd: step "
                "with a closure that calls loss.backward(create_graph=True), or with a "
                "gradkit.transforms.newton.ModelClosure"
            )
    assert closure is not None
    return _FiniteDifferenceHessian(params, closure, work), finish


# ---------------------------------------------------------------------------- transforms
class ScaleByGradRegNewton(GradientTransformation):
    """Gradient-regularized Newton direction ``d = (H~ + lambda I)^-1 g``,
    ``lambda = sqrt(L * |g|)`` (``|g|`` the norm over the group).

    ``curvature``: ``"exact"`` (Hessian), ``"gauss_newton"``, ``"fisher"`` (empirical Fisher)
    or ``"diagonal"`` (a Hutchinson estimate ``mean_z z * (H z)`` of the Hessian's diagonal
    from ``diag_samples`` Rademacher probes, floored at 0). The system is solved by conjugate
    gradient (at most ``cg_max_iter`` products, relative residual ``cg_tol``); the diagonal
    case divides. Semenov, Jaggi & Doikov, "Gradient-Normalized Smoothness for Optimization
    with Approximate Hessians", 2025; the ``sqrt(L |g|)`` regularization is Mishchenko's,
    "Regularized Newton Method with Global O(1/k^2) Convergence", arXiv 2112.02089, and
    Doikov & Nesterov's, "Gradient Regularization of Newton Method with Bregman Distances",
    arXiv 2112.02952.

    ``weight_decay`` (``mu``) makes the objective ``f + mu/2 |x|^2`` (an L2 term, not decoupled
    decay): ``mu x`` joins the gradient and ``mu I`` every curvature model, so Gauss-Newton,
    Fisher and diagonal models also carry the regulariser's curvature.

    ``last_stats`` holds the last step's ``lambda``, CG iterations and products.
    """

    hyperparameters = (interval("L", 1.0, 0.0), interval("weight_decay", 0.0, 0.0))
    flat_ok = False
    needs_closure = True
    complex_ok = False

    def __init__(
        self,
        curvature: str = "exact",
        *,
        cg_max_iter: int = 20,
        cg_tol: float = 1e-4,
        hvp: str = "auto",
        diag_samples: int = 8,
        seed: int = 0,
        adaptive: bool = False,
    ) -> None:
        self.curvature = curvature
        self.cg_max_iter, self.cg_tol = cg_max_iter, cg_tol
        self.hvp, self.diag_samples, self.seed = hvp, diag_samples, seed
        self.adaptive = adaptive
        self.last_stats: dict[str, float] = {}

    def init(self, params: TensorList) -> State:
        if not self.adaptive:
            return {}
        # the adaptive search's radius gamma (0: not set yet), one copy per parameter
        return {"gamma": [torch.zeros((), dtype=torch.float64) for _ in params]}

    def check_group(self, group: Any) -> None:
        if group.get("maximize") and self.curvature in ("gauss_newton", "fisher"):
            raise ValueError(
                f"maximize=True has no meaning with hessian={self.curvature!r} (a positive "
                "semi-definite model of a minimised loss); minimise the negated objective"
            )

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        work = _work_dtype(params[0].dtype)
        g = flatten([u.detach() for u in updates]).to(work)
        wd = float(ctx.group["weight_decay"])
        if wd:  # the objective f + wd/2 |x|^2: its gradient and (below) its curvature
            g = g + wd * flatten([p.detach() for p in params]).to(work)
        gnorm = float(g.norm())
        lam = math.sqrt(float(ctx.group["L"]) * gnorm) if math.isfinite(gnorm) else gnorm
        sign = -1.0 if ctx.group["maximize"] else 1.0  # updates are -g: curvature of -f
        if gnorm == 0.0 or not math.isfinite(gnorm):
            d = g / lam if gnorm else torch.zeros_like(g)  # zero, or let the NaN through
            self.last_stats = {"lambda": lam, "iterations": 0, "matvecs": 0}
            return ctx.owned([t.to(p.dtype) for t, p in zip(unflatten(d, params), params)])
        kind = "exact" if self.curvature == "diagonal" else self.curvature
        mv, finish = hessian_products(
            params, ctx.grads, ctx, curvature=kind, hvp=self.hvp, name="grad_reg_newton"
        )
        count = [0]

        def matvec(v: Tensor) -> Tensor:
            count[0] += 1
            out = mv(v)
            out = out if sign > 0 or kind != "exact" else -out
            return out + wd * v if wd else out

        if self.adaptive:
            try:
                d = self._adaptive_step(g, gnorm, wd, sign, matvec, state, params, ctx)
            finally:
                finish()
            self.last_stats["matvecs"] = count[0]
            return ctx.owned([t.to(p.dtype) for t, p in zip(unflatten(d, params), params)])
        try:
            if self.curvature == "diagonal":
                diag = self._diagonal(g, matvec, ctx)
                d = g / (diag + lam) if lam > 0 else g / diag.clamp_min(1e-12)
                iters = 0
            else:
                res = conjugate_gradient(
                    matvec, g, damping=lam, tol=self.cg_tol, max_iter=self.cg_max_iter
                )
                d, iters = res.x, res.iterations
        finally:
            finish()
        self.last_stats = {"lambda": lam, "iterations": iters, "matvecs": count[0]}
        return ctx.owned([t.to(p.dtype) for t, p in zip(unflatten(d, params), params)])

    def _diagonal(self, g: Tensor, matvec: FlatMatvec, ctx: StepContext) -> Tensor:
        """Hutchinson: the mean of ``z * (C z)`` over Rademacher ``z``, floored at 0."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + ctx.step)
        diag = torch.zeros_like(g)
        for _ in range(self.diag_samples):
            z = (torch.randint(0, 2, g.shape, generator=gen) * 2 - 1).to(g)
            diag += z * matvec(z)
        return (diag / self.diag_samples).clamp_min(0.0)

    def _adaptive_step(
        self,
        g: Tensor,
        gnorm: float,
        wd: float,
        sign: float,
        matvec: FlatMatvec,
        state: State,
        params: TensorList,
        ctx: StepContext,
    ) -> Tensor:
        """The adaptive search of the paper's Algorithm 1: ``lambda = |g| / gamma``; accept the
        step ``d`` if ``f(x) - f(x - d) >= |g(x - d)|^2 / (8 lambda)`` and double ``gamma`` for
        the next step, else halve ``gamma`` and retry (at most 40 trials; the last is taken).
        The curvature model is built once (a Krylov basis of ``cg_max_iter`` Lanczos steps, or
        the diagonal) and serves every trial; each trial costs one closure call."""
        assert ctx.closure is not None
        gamma = float(state["gamma"][0])
        if not gamma > 0.0:  # first step: start where the fixed rule sqrt(L |g|) is
            big_l = float(ctx.group["L"])
            gamma = math.sqrt(gnorm / big_l) if big_l > 0 else 1e12
        if self.curvature == "diagonal":
            diag = self._diagonal(g, matvec, ctx)

            def solve(lam: float) -> Tensor:
                return g / (diag + lam)

            steps = 0
        else:
            kb = krylov_basis(matvec, g, self.cg_max_iter)
            solve, steps = kb.solve, kb.steps

        def objective(loss: Any) -> float:
            value = sign * float(loss.detach() if isinstance(loss, Tensor) else loss)
            if wd:
                value += 0.5 * wd * sum(float(p.detach().double().pow(2).sum()) for p in params)
            return value

        def gradient() -> Tensor:
            out = flatten(
                [torch.zeros_like(p) if p.grad is None else p.grad.detach() for p in params]
            ).to(g.dtype)
            out = sign * out
            return out + wd * flatten([p.detach() for p in params]).to(g.dtype) if wd else out

        f_k = objective(ctx.loss)
        x0 = [p.detach().clone() for p in params]
        trials, accepted = 0, False
        try:
            while trials < 40:
                trials += 1
                lam = gnorm / gamma
                d = solve(lam)
                for p, x, t in zip(params, x0, unflatten(d, params)):
                    p.copy_(x - t.to(p.dtype))
                with torch.enable_grad():
                    f_new = objective(ctx.closure())
                g_new = gradient()
                if f_k - f_new >= float(g_new.dot(g_new)) / (8.0 * lam):  # NaN: rejected
                    gamma, accepted = 2.0 * gamma, True
                    break
                gamma = 0.5 * gamma
        finally:
            for p, x in zip(params, x0):
                p.copy_(x)
        for t in state["gamma"]:
            t.fill_(gamma)
        self.last_stats = {
            "lambda": lam,
            "iterations": steps,
            "gamma": gamma,
            "trials": trials,
            "accepted": float(accepted),
        }
        return d

    def __repr__(self) -> str:
        return f"ScaleByGradRegNewton(curvature={self.curvature!r})"


class ScaleBySaddleFreeNewton(GradientTransformation):
    """Saddle-free Newton direction ``d = (|H| + damping I)^-1 g`` in the ``krylov_dim``-step
    Krylov space of the Hessian and the gradient (Lanczos; ``|H|`` replaces each Ritz value by
    its absolute value), so negative-curvature directions are descended rather than
    climbed. Dauphin, Pascanu, Gulcehre, Cho, Ganguli & Bengio, "Identifying and attacking the
    saddle point problem in high-dimensional non-convex optimization", NeurIPS 2014,
    arXiv 1406.2572.

    ``last_stats`` holds the last step's Lanczos steps and the smallest Ritz value.
    """

    hyperparameters = (interval("damping", 1e-2, 0.0, low_open=True),)
    flat_ok = False
    needs_closure = True
    complex_ok = False

    def __init__(self, krylov_dim: int = 10, *, hvp: str = "auto") -> None:
        self.krylov_dim, self.hvp = krylov_dim, hvp
        self.last_stats: dict[str, float] = {}

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        work = _work_dtype(params[0].dtype)
        g = flatten([u.detach() for u in updates]).to(work)
        gnorm = float(g.norm())
        if gnorm == 0.0 or not math.isfinite(gnorm):
            d = torch.zeros_like(g) if gnorm == 0.0 else g
            self.last_stats = {"iterations": 0, "min_ritz": float("nan")}
            return ctx.owned([t.to(p.dtype) for t, p in zip(unflatten(d, params), params)])
        mv, finish = hessian_products(
            params, ctx.grads, ctx, curvature="exact", hvp=self.hvp, name="saddle_free_newton"
        )
        try:  # |-H| = |H|: maximize needs no sign change
            res = lanczos_abs_solve(
                mv, g, num_steps=self.krylov_dim, damping=float(ctx.group["damping"])
            )
        finally:
            finish()
        self.last_stats = {"iterations": res.iterations, "min_ritz": float(res.ritz_values[0])}
        return ctx.owned([t.to(p.dtype) for t, p in zip(unflatten(res.x, params), params)])

    def __repr__(self) -> str:
        return f"ScaleBySaddleFreeNewton(krylov_dim={self.krylov_dim})"
