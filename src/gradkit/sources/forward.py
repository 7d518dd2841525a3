"""Forward gradients: unbiased gradient estimates from forward-mode directional derivatives.

Baydin, Pearlmutter, Syme, Wood, Torr, "Gradients without Backpropagation", 2022,
arXiv 2202.08587.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp, vmap

from gradkit.sources._base import (
    Cost,
    GradientSource,
    LossFn,
    _Tally,
    check_positive_int,
    sample_like,
    split_batch,
    trainable,
    write_grads,
)

__all__ = ["ForwardGradient"]


class ForwardGradient(GradientSource):
    """The forward gradient ``g = (grad L . v) v`` with ``v ~ N(0, I)``, averaged over directions.

    For each of ``directions`` independent draws ``v_k`` (one standard normal tensor per
    parameter, all parameters together forming one vector ``v_k``), ``torch.func.jvp`` evaluates
    the loss and its directional derivative ``d_k = grad L . v_k`` in one forward-mode pass; the
    estimate is ``g = (1/K) sum_k d_k v_k``. Since ``E[v v^T] = I``, ``E[g] = grad L``
    (unbiased), and by Isserlis' theorem its covariance is
    ``(||grad L||^2 I + grad L grad L^T) / K`` (per coordinate ``(||grad L||^2 + g_i^2) / K``).

    Baydin, Pearlmutter, Syme, Wood, Torr, "Gradients without Backpropagation", 2022,
    arXiv 2202.08587 (the paper uses one direction per step; ``directions > 1`` averages).

    Args:
        directions: number of random directions ``K`` averaged per call (>= 1).
        vectorized: evaluate the ``K`` JVPs at once with ``torch.func.vmap`` (faster for small
            models and many directions; needs a model that ``vmap`` supports, without
            randomness such as dropout). ``False`` loops over directions.
        generator: ``torch.Generator`` for the directions (on the parameters' device);
            ``None`` uses the global generator.

    Cost per call: ``K`` JVPs (each also evaluates the forward), no backward pass. The loss
    returned is the primal value of the first JVP, ``L`` at the current parameters.

    >>> import torch
    >>> from torch import nn
    >>> from gradkit.sources import ForwardGradient
    >>> torch.manual_seed(0) and None
    >>> model = nn.Linear(3, 1)
    >>> x, y = torch.randn(16, 3), torch.randn(16, 1)
    >>> source = ForwardGradient(directions=4, generator=torch.Generator().manual_seed(1))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.05)
    >>> loss = source.compute(model, nn.functional.mse_loss, (x, y))
    >>> opt.step()
    >>> source.last_cost.jvp, source.last_cost.backward
    (4, 0)
    """

    name = "forward"

    def __init__(
        self,
        directions: int = 1,
        *,
        vectorized: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.directions = check_positive_int("directions", directions)
        self.vectorized = bool(vectorized)
        self.generator = generator

    def __repr__(self) -> str:
        return f"ForwardGradient(directions={self.directions}, vectorized={self.vectorized})"

    def _functional(
        self, model: nn.Module, loss_fn: LossFn, batch: Any
    ) -> tuple[Callable[..., Tensor], list[Tensor]]:
        inputs, targets = split_batch(batch)
        named = trainable(model)
        names = [n for n, _ in named]
        fixed = {n: t.detach() for n, t in model.named_parameters() if not t.requires_grad}
        fixed.update(dict(model.named_buffers()))

        def loss_of(*ps: Tensor) -> Tensor:
            state = {**fixed, **dict(zip(names, ps))}
            return loss_fn(functional_call(model, state, (inputs,)), targets)

        return loss_of, [p for _, p in named]

    def _batched(
        self, loss_of: Callable[..., Tensor], params: list[Tensor], n: int
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """``n`` directions at once: the losses, the derivatives ``(n,)`` and the tangents."""
        primals = tuple(p.detach() for p in params)
        tangents = sample_like(params, self.generator, (n,))
        losses, derivs = vmap(lambda *t: jvp(loss_of, primals, t))(*tangents)
        return losses.reshape(-1), derivs.reshape(-1), tangents

    def estimates(self, model: nn.Module, loss_fn: LossFn, batch: Any, n: int) -> Tensor:
        """``n`` independent one-direction estimates ``(grad L . v_k) v_k`` as rows of an
        ``(n, d)`` tensor (the parameters flattened and concatenated in ``named_parameters``
        order), computed at once with ``vmap``; for studying the estimator's distribution.
        Does not touch ``.grad``; adds ``n`` JVPs to ``cost``."""
        n = check_positive_int("n", n)
        loss_of, params = self._functional(model, loss_fn, batch)
        with torch.no_grad():
            _, derivs, tangents = self._batched(loss_of, params, n)
            flat = torch.cat([t.reshape(n, -1) for t in tangents], dim=1)
            out = derivs.unsqueeze(1).to(flat.dtype) * flat
        self.cost = self.cost + Cost(forward=n, jvp=n, calls=1)
        return out

    def _compute(
        self, model: nn.Module, loss_fn: LossFn, batch: Any, accumulate: bool
    ) -> tuple[Tensor, _Tally]:
        loss_of, params = self._functional(model, loss_fn, batch)
        k = self.directions
        with torch.no_grad():
            if self.vectorized:
                losses, derivs, tangents = self._batched(loss_of, params, k)
                loss = losses[0]
                grads = [
                    (derivs.reshape((k,) + (1,) * p.dim()).to(t.dtype) * t).mean(0)
                    for p, t in zip(params, tangents)
                ]
            else:
                primals = tuple(p.detach() for p in params)
                grads = [torch.zeros_like(p) for p in params]
                loss = None
                for _ in range(k):
                    tangents = tuple(sample_like(params, self.generator))
                    value, deriv = jvp(loss_of, primals, tangents)
                    if loss is None:
                        loss = value
                    for g, t in zip(grads, tangents):
                        g.add_(t * (deriv / k))
        write_grads(params, grads, accumulate)
        return loss, _Tally(forward=k, jvp=k)
