"""Forward gradients by activity perturbation: guess each linear layer's output gradient with a
random direction in activation space, form the weight gradient locally.

Ren, Kornblith, Liao, Hinton, "Scaling Forward Gradient With Local Losses", 2022,
arXiv 2210.03310 (activity perturbation); Fournier, Rivaud, Belilovsky, Eickenberg, Oyallon,
"Can Forward Gradient Match Backpropagation?", 2023, arXiv 2306.06968 (the same guess family).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.func import jvp

from gradkit.sources._base import (
    Cost,
    GradientSource,
    LossFn,
    _Tally,
    check_positive_int,
    split_batch,
    write_grads,
)
from gradkit.sources.dfa import dfa_blocks

__all__ = ["ActivityPerturbedForwardGradient"]


class ActivityPerturbedForwardGradient(GradientSource):
    """Activity-perturbed forward gradient for an ``nn.Sequential`` of linear blocks.

    The model is split into blocks as for DFA (:func:`dfa_blocks`); each block must be an
    ``nn.Linear`` followed by parameter-free modules. For block ``l`` with input ``x_i`` and
    pre-activation ``z_i = W x_i + b`` (example ``i`` of the batch) the source draws one
    direction ``u_i ~ N(0, I)`` per example in the space of ``z_i``, evaluates by one
    forward-mode pass (``torch.func.jvp`` of the rest of the network from ``z``) the
    per-example directional derivative of the loss ``d_i = dL/dz_i . u_i`` and forms::

        g_z_i = d_i u_i                                  (activity-gradient guess)
        grad W ~ sum_i g_z_i x_i^T,   grad b ~ sum_i g_z_i

    averaged over ``directions`` independent draws. ``d_i`` is computed exactly per example:
    the JVP gives the output tangent ``dY_i = J_i u_i``, and ``d_i = (dL/dY)_i . dY_i`` with
    ``dL/dY`` the gradient of ``loss_fn`` with respect to the model output only (no pass
    through the network). This needs examples that do not interact inside the network (no
    batch norm in training mode) and the same function in every pass: dropout in training mode
    draws other masks in the first forward and in each JVP, which biases the estimate (use
    ``model.eval()`` for such layers, or no dropout).

    Since ``E[u u^T] = I``, ``E[g_z_i] = dL/dz_i`` and the weight estimate is unbiased. For one
    example, the total variance of the weight estimate is ``(m + 1) ||g_z||^2 ||x~||^2`` with
    ``m`` the layer's output width and ``x~ = (x, 1)`` (``x`` alone without a bias), against
    ``(m n' + 1) ||g_z||^2 ||x~||^2`` for the weight-perturbed :class:`ForwardGradient` on the
    same layer (``n'`` = length of ``x~``): the guess lives in ``m`` dimensions, not ``m n'``.

    Ren, Kornblith, Liao, Hinton, "Scaling Forward Gradient With Local Losses", 2022,
    arXiv 2210.03310; Fournier, Rivaud, Belilovsky, Eickenberg, Oyallon, "Can Forward Gradient
    Match Backpropagation?", 2023, arXiv 2306.06968. The papers' local losses, auxiliary
    networks and architectures are not reproduced: here the end-to-end loss is the target and
    every block is perturbed on its own (one JVP per block and direction).

    Args:
        model: the ``nn.Sequential`` to train (inputs ``(batch, features)``).
        directions: independent perturbations ``K`` averaged per block and call (>= 1).
        generator: ``torch.Generator`` for the directions (on the activations' device);
            ``None`` uses the global generator. Draw order: for each block in order, one
            tensor ``torch.randn((K, *z.shape))``.

    Cost per call: ``B K`` JVPs (``B`` blocks; each evaluates the rest of the network from the
    block, counted as a forward; a block's ``K`` directions run as one JVP on the batch
    repeated ``K`` times) and 1 forward; no backward pass through the network.

    >>> import torch
    >>> from torch import nn
    >>> from gradkit.sources import ActivityPerturbedForwardGradient
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    >>> source = ActivityPerturbedForwardGradient(model, directions=2)
    >>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    >>> loss = source.compute(model, nn.functional.cross_entropy, (x, y))
    >>> source.last_cost.jvp, source.last_cost.backward, model[0].weight.grad.shape
    (4, 0, torch.Size([8, 4]))
    """

    name = "forward_activity"

    def __init__(
        self,
        model: nn.Sequential,
        directions: int = 1,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.blocks = dfa_blocks(model)
        for i, block in enumerate(self.blocks):
            owners = [m for m in block if any(True for _ in m.parameters(recurse=False))]
            if not isinstance(block[0], nn.Linear) or len(owners) != 1:
                raise ValueError(
                    "Invalid model: activity perturbation needs every block to start with an "
                    f"nn.Linear followed by parameter-free modules; block {i} is {block}"
                )
        self.directions = check_positive_int("directions", directions)
        self.generator = generator

    def __repr__(self) -> str:
        return (
            f"ActivityPerturbedForwardGradient(blocks={len(self.blocks)}, "
            f"directions={self.directions})"
        )

    def _check_model(self, model: nn.Module) -> None:
        if model is not self.model:
            raise ValueError(
                "Invalid model: this ActivityPerturbedForwardGradient source was built for "
                "another model"
            )

    def _forward(self, inputs: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """The inputs ``x_l`` and pre-activations ``z_l`` of every block's linear layer, and
        the output."""
        xs, zs, h = [], [], inputs
        for block in self.blocks:
            xs.append(h)
            z = block[0](h)
            zs.append(z)
            h = block[1:](z)
        return xs, zs, h

    def _rest(self, index: int) -> nn.Module:
        """The network from block ``index``'s pre-activation to the output."""
        return nn.Sequential(self.blocks[index][1:], *self.blocks[index + 1 :])

    def _output_grad(self, output: Tensor, loss_fn: LossFn, targets: Any) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            out = output.detach().requires_grad_(True)
            loss = loss_fn(out, targets)
            (grad,) = torch.autograd.grad(loss, out)
        return loss.detach(), grad

    def _activity_guesses(
        self, index: int, z: Tensor, dl_dy: Tensor, n: int
    ) -> tuple[Tensor, Tensor]:
        """``n`` draws of the per-example guess ``g_z = (dL/dz_i . u_i) u_i`` for block
        ``index``: the directions ``(n, *z.shape)`` and the guesses, same shape. The ``n``
        draws go through one JVP, stacked along the batch dimension (examples are
        independent)."""
        rest = self._rest(index)
        us = torch.randn((n, *z.shape), generator=self.generator, dtype=z.dtype, device=z.device)
        stacked = z.unsqueeze(0).expand_as(us).reshape(n * z.shape[0], *z.shape[1:])
        _, dy = jvp(rest, (stacked,), (us.reshape(stacked.shape),))
        dy = dy.reshape(n, *dl_dy.shape)
        d = (dl_dy.unsqueeze(0) * dy).reshape(n, z.shape[0], -1).sum(2)
        guesses = d.reshape(d.shape + (1,) * (z.dim() - 1)) * us
        return us, guesses

    def activity_estimates(
        self, model: nn.Module, loss_fn: LossFn, batch: Any, block: int, n: int
    ) -> Tensor:
        """``n`` independent one-direction guesses of ``dL/dz`` for block ``block``'s
        pre-activation ``z``, shape ``(n, *z.shape)``; for studying the estimator. Does not
        touch ``.grad``; adds ``n`` JVPs and ``1 + n`` forwards (a JVP runs a forward) to ``cost``."""
        self._check_model(model)
        n = check_positive_int("n", n)
        if isinstance(block, bool) or not isinstance(block, int):
            raise ValueError(f"Invalid block: an integer in [0, {len(self.blocks)}); got {block}")
        if not 0 <= block < len(self.blocks):
            raise ValueError(f"Invalid block: {block}; must be in [0, {len(self.blocks)})")
        inputs, targets = split_batch(batch)
        with torch.no_grad():
            _, zs, out = self._forward(inputs)
            _, dl_dy = self._output_grad(out, loss_fn, targets)
            _, guesses = self._activity_guesses(block, zs[block], dl_dy, n)
        self.cost = self.cost + Cost(forward=1 + n, jvp=n, calls=1)
        return guesses

    def _compute(
        self, model: nn.Module, loss_fn: LossFn, batch: Any, accumulate: bool
    ) -> tuple[Tensor, _Tally]:
        self._check_model(model)
        inputs, targets = split_batch(batch)
        k = self.directions
        params: list[Tensor] = []
        grads: list[Tensor] = []
        with torch.no_grad():
            xs, zs, out = self._forward(inputs)
            loss, dl_dy = self._output_grad(out, loss_fn, targets)
            for i, (block, x, z) in enumerate(zip(self.blocks, xs, zs)):
                _, guesses = self._activity_guesses(i, z, dl_dy, k)
                g_z = guesses.mean(0).reshape(-1, z.shape[-1])
                x2 = x.reshape(-1, x.shape[-1])
                linear = block[0]
                if linear.weight.requires_grad:
                    params.append(linear.weight)
                    grads.append(g_z.T @ x2)
                if linear.bias is not None and linear.bias.requires_grad:
                    params.append(linear.bias)
                    grads.append(g_z.sum(0))
        write_grads(params, grads, accumulate)
        n = len(self.blocks) * k
        return loss, _Tally(forward=1 + n, jvp=n)
