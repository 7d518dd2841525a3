"""Curvature operators: Hessian, Gauss-Newton and empirical-Fisher vector products.

Each operator represents a symmetric ``P x P`` matrix ``C`` over the selected parameters of a
model, averaged over a data set::

    C = (1 / N) * sum_b  n_b * C_b          (C_b: the matrix of batch b, n_b its size)

with ``C_b`` one of

* Hessian       ``H_b  = d^2 L_b / d theta^2``                       (``HessianOperator``)
* Gauss-Newton  ``G_b  = J_b^T (d^2 L_b / d f^2) J_b``, ``J_b = df/dtheta`` (``GaussNewtonOperator``)
* emp. Fisher   ``F_b  = (1 / n_b) sum_i g_i g_i^T``, ``g_i`` per-example grads (``FisherOperator``)

where ``L_b = loss_fn(model(x_b), y_b)`` is the mean loss of the batch. Only products
``C v`` are formed (``matvec``), never ``C`` itself. ``v`` and the result are lists of tensors
shaped like ``op.params``; ``op.num_matvecs`` counts the products.

Hessian-vector products use double backward (Pearlmutter, "Fast exact multiplication by the
Hessian", 1994): ``H v = d (g . v) / d theta`` with ``g`` built with ``create_graph=True``. With
a single batch the gradient graph is built once and kept (``cache_graph``), so each product
costs one backward pass through it. ``hvp_method="func"`` uses forward-over-reverse
(``torch.func.jvp`` of ``torch.func.grad``) instead; see docs/curvature.md for which is faster.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp

from gradkit.curvature._utils import (
    check_positive_int,
    check_scalar_loss,
    flatten,
    is_single_batch,
    iter_batches,
    resolve_params,
    unflatten,
)
from gradkit.curvature.per_example import named_params, per_example_gradient_matrix
from gradkit.errors import invalid_value

LossFn = Callable[[Tensor, Tensor], Tensor]
_HVP_METHODS = ("autograd", "func")


def _zeros_for_none(grads: Sequence[Tensor | None], like: Sequence[Tensor]) -> list[Tensor]:
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, like)]


def _weighted_mean(parts: Iterable[tuple[Sequence[Tensor], int]]) -> list[Tensor]:
    """The mean of per-batch tensor lists weighted by batch size: ``sum_b n_b t_b / sum_b n_b``."""
    acc: list[Tensor] | None = None
    total = 0
    for part, n in parts:
        if acc is None:
            acc = [t.detach() * n for t in part]
        else:
            for a, t in zip(acc, part):
                a.add_(t.detach(), alpha=n)
        total += n
    if acc is None or total == 0:
        raise ValueError("data is empty: no examples were found")
    return [a / total for a in acc]


class CurvatureOperator:
    """Base class: batch-averaged symmetric matrix-vector products over a model's parameters.

    Subclasses implement ``_prepare(inputs, targets) -> state`` (the per-batch work that does not
    depend on ``v``) and ``_apply(state, v, keep) -> list[Tensor]`` (the product for one batch).

    Args:
        model: any ``nn.Module``. It is used in whatever mode it is in (call ``model.eval()`` to
            freeze dropout and batch-norm statistics, as the curvature of a random function is
            rarely what is wanted).
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` mean loss over the batch.
        data: one ``(inputs, targets)`` batch, or an iterable of such batches (a DataLoader).
        params: parameters to differentiate; default all with ``requires_grad``.
        max_samples: use at most this many examples from ``data`` (the last batch is cut).
        cache_graph: keep the per-batch state (e.g. the gradient graph) between products.
            Default: True for a single batch, False for an iterable. Caching many batches costs
            memory proportional to the number of batches.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Any,
        params: Sequence[Tensor] | None = None,
        max_samples: int | None = None,
        cache_graph: bool | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable as loss_fn(outputs, targets) -> scalar")
        check_positive_int("max_samples", max_samples, allow_none=True)
        if data is None:
            raise ValueError("data is empty: pass an (inputs, targets) batch or a DataLoader")
        if is_single_batch(data) and data[0].shape[0] == 0:
            raise ValueError("data is empty: the (inputs, targets) batch has no examples")
        self.model = model
        self.loss_fn = loss_fn
        self.data = data
        self.max_samples = max_samples
        self.params: list[Tensor] = resolve_params(model, params)
        self.num_matvecs = 0
        self.cache_graph = self._default_cache_graph() if cache_graph is None else bool(cache_graph)
        self._cache: list[tuple[Any, int]] | None = None

    def _default_cache_graph(self) -> bool:
        """Whether to cache per-batch state when ``cache_graph`` is not given: for one batch."""
        return is_single_batch(self.data)

    # ---- sizes -------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Number of scalar parameters (the side of the matrix)."""
        return sum(p.numel() for p in self.params)

    @property
    def dtype(self) -> torch.dtype:
        return self.params[0].dtype

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    # ---- data --------------------------------------------------------------------------
    def _batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """The data batches, moved to the device of the parameters."""
        dev = self.device
        for x, y in iter_batches(self.data, self.max_samples):
            yield x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)

    def _states(self) -> Iterator[tuple[Any, int]]:
        if self.cache_graph:
            if self._cache is None:
                self._cache = [(self._prepare(x, y), x.shape[0]) for x, y in self._batches()]
            yield from self._cache
        else:
            for x, y in self._batches():
                yield self._prepare(x, y), x.shape[0]

    def clear_cache(self) -> None:
        """Drop cached graphs (call after the parameters change)."""
        self._cache = None

    def _forward_loss(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        outputs = self.model(inputs)
        loss = check_scalar_loss(self.loss_fn(outputs, targets))
        return outputs, loss

    # ---- products ----------------------------------------------------------------------
    def _check_vector(self, v: Sequence[Tensor]) -> list[Tensor]:
        v = list(v)
        if len(v) != len(self.params):
            raise ValueError(
                f"v must be a list of {len(self.params)} tensors shaped like op.params, "
                f"got {len(v)}"
            )
        for vi, p in zip(v, self.params):
            if vi.shape != p.shape:
                raise ValueError(
                    f"v has a tensor of shape {tuple(vi.shape)} where {tuple(p.shape)} is expected"
                )
        return [vi.to(dtype=p.dtype, device=p.device) for vi, p in zip(v, self.params)]

    def matvec(self, v: Sequence[Tensor]) -> list[Tensor]:
        """The product ``C v`` for ``v`` a list of tensors shaped like ``self.params``."""
        v = self._check_vector(v)
        out = _weighted_mean(
            (self._apply(state, v, keep=self.cache_graph), n) for state, n in self._states()
        )
        self.num_matvecs += 1
        return out

    def matvec_flat(self, v: Tensor) -> Tensor:
        """``C v`` with ``v`` and the result as one flat vector of length ``self.dim``."""
        return flatten(self.matvec(unflatten(v, self.params)))

    def gradient(self) -> list[Tensor]:
        """The batch-averaged gradient of the loss (no graph kept)."""
        return _weighted_mean((self._batch_gradient(x, y), x.shape[0]) for x, y in self._batches())

    def _batch_gradient(self, inputs: Tensor, targets: Tensor) -> list[Tensor]:
        _, loss = self._forward_loss(inputs, targets)
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        return _zeros_for_none(grads, self.params)

    def loss(self) -> float:
        """The batch-averaged loss."""
        total, acc = 0, 0.0
        with torch.no_grad():
            for x, y in self._batches():
                _, loss = self._forward_loss(x, y)
                acc += float(loss) * x.shape[0]
                total += x.shape[0]
        if total == 0:
            raise ValueError("data is empty: no examples were found")
        return acc / total

    def _prepare(self, inputs: Tensor, targets: Tensor) -> Any:  # pragma: no cover
        raise NotImplementedError

    def _apply(self, state: Any, v: list[Tensor], keep: bool) -> list[Tensor]:  # pragma: no cover
        raise NotImplementedError


class HessianOperator(CurvatureOperator):
    """Hessian-vector products ``H v`` of the batch-averaged loss.

    ``hvp_method``: ``"autograd"`` (double backward; reuses the gradient graph when cached) or
    ``"func"`` (forward-over-reverse ``torch.func.jvp(torch.func.grad(...))``, never cached).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Any,
        params: Sequence[Tensor] | None = None,
        max_samples: int | None = None,
        cache_graph: bool | None = None,
        hvp_method: str = "autograd",
    ) -> None:
        if hvp_method not in _HVP_METHODS:
            raise invalid_value("hvp_method", hvp_method, f"one of {_HVP_METHODS}")
        if hvp_method == "func":
            cache_graph = False
        super().__init__(model, loss_fn, data, params, max_samples, cache_graph)
        self.hvp_method = hvp_method
        if hvp_method == "func":
            self._names = list(named_params(model, self.params).keys())

    def _prepare(self, inputs: Tensor, targets: Tensor) -> Any:
        if self.hvp_method == "func":
            return inputs, targets
        _, loss = self._forward_loss(inputs, targets)
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        return grads

    def _apply(self, state: Any, v: list[Tensor], keep: bool) -> list[Tensor]:
        if self.hvp_method == "func":
            return self._apply_func(state, v)
        grads = state
        idx = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        if not idx:
            return [torch.zeros_like(p) for p in self.params]
        hv = torch.autograd.grad(
            [grads[i] for i in idx],
            self.params,
            grad_outputs=[v[i] for i in idx],
            retain_graph=keep,
            allow_unused=True,
        )
        return _zeros_for_none(hv, self.params)

    def gradient(self) -> list[Tensor]:
        """The batch-averaged gradient; free when the gradient graph is cached."""
        if not (self.cache_graph and self.hvp_method == "autograd"):
            return super().gradient()
        return _weighted_mean(
            (_zeros_for_none(grads, self.params), n) for grads, n in self._states()
        )

    def _apply_func(self, batch: tuple[Tensor, Tensor], v: list[Tensor]) -> list[Tensor]:
        inputs, targets = batch
        model, loss_fn = self.model, self.loss_fn

        def loss_of(*ps: Tensor) -> Tensor:
            out = functional_call(model, dict(zip(self._names, ps)), (inputs,), strict=False)
            return check_scalar_loss(loss_fn(out, targets))

        primals = tuple(p.detach() for p in self.params)
        argnums = tuple(range(len(primals)))
        _, hv = jvp(grad(loss_of, argnums=argnums), primals, tuple(v))
        return list(hv)


class GaussNewtonOperator(CurvatureOperator):
    """Generalised Gauss-Newton products ``G v = J^T H_out J v``.

    ``J`` is the Jacobian of the model outputs w.r.t. the parameters and ``H_out`` the Hessian
    of ``loss_fn`` w.r.t. the outputs (Schraudolph, "Fast curvature matrix-vector products for
    second-order gradient descent", 2002). ``J v`` is formed by the double-vjp trick (the
    derivative of ``J^T u`` w.r.t. a dummy ``u``), ``H_out`` by double backward through the loss.
    Positive semi-definite when the loss is convex in the outputs (MSE, cross-entropy).
    """

    def _prepare(self, inputs: Tensor, targets: Tensor) -> Any:
        outputs, loss = self._forward_loss(inputs, targets)
        (g_out,) = torch.autograd.grad(loss, outputs, create_graph=True)
        dummy = torch.zeros_like(outputs, requires_grad=True)
        jt_u = torch.autograd.grad(
            outputs, self.params, grad_outputs=dummy, create_graph=True, allow_unused=True
        )
        return outputs, g_out, dummy, jt_u

    def _apply(self, state: Any, v: list[Tensor], keep: bool) -> list[Tensor]:
        outputs, g_out, dummy, jt_u = state
        idx = [i for i, t in enumerate(jt_u) if t is not None and t.requires_grad]
        if not idx or not g_out.requires_grad:
            return [torch.zeros_like(p) for p in self.params]
        (jv,) = torch.autograd.grad(
            [jt_u[i] for i in idx], dummy, grad_outputs=[v[i] for i in idx], retain_graph=True
        )
        (hjv,) = torch.autograd.grad(g_out, outputs, grad_outputs=jv, retain_graph=True)
        out = torch.autograd.grad(
            outputs, self.params, grad_outputs=hjv, retain_graph=keep, allow_unused=True
        )
        return _zeros_for_none(out, self.params)


class FisherOperator(CurvatureOperator):
    """Empirical-Fisher products ``F v = (1/N) sum_i g_i (g_i . v)``.

    ``g_i`` is the gradient of ``loss_fn`` on example ``i`` alone (computed with
    :func:`gradkit.curvature.per_example_gradients`). By default the per-example gradient matrix
    of a single batch is cached when it has at most 2**26 entries.
    """

    _CACHE_LIMIT = 2**26

    def _default_cache_graph(self) -> bool:
        """One batch whose per-example gradient matrix has at most ``_CACHE_LIMIT`` entries."""
        if not super()._default_cache_graph():
            return False
        n = self.data[0].shape[0]
        if self.max_samples is not None:
            n = min(self.max_samples, n)
        return n * self.dim <= self._CACHE_LIMIT

    def _prepare(self, inputs: Tensor, targets: Tensor) -> Any:
        return per_example_gradient_matrix(self.model, self.loss_fn, inputs, targets, self.params)

    def _apply(self, state: Any, v: list[Tensor], keep: bool) -> list[Tensor]:
        gmat = state  # [n, P]
        coeff = gmat @ flatten(v)
        return unflatten((coeff @ gmat) / gmat.shape[0], self.params)
