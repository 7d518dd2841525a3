"""Fish: first-order inter-domain gradient matching for domain generalization.

One Fish iteration over ``S`` domains (one batch from each), with inner learning rate ``alpha``
and meta learning rate ``eps``::

    theta_tilde <- theta                                  # a copy of the weights
    for each domain i, in a random order:
        theta_tilde <- theta_tilde - alpha * grad L_i(theta_tilde)     # one inner SGD step
    theta <- theta + eps * (theta_tilde - theta)

Expanding the inner loop to second order in ``alpha`` (domains in the order ``1..S``)::

    theta_tilde - theta = -alpha sum_i g_i + alpha^2 sum_{j < i} H_i g_j + O(alpha^3)

with ``g_i``, ``H_i`` the gradient and Hessian of ``L_i`` at ``theta``. Averaged over the orders,
``sum_{j<i} H_i g_j`` becomes ``(1/2) grad sum_{i<j} <g_i, g_j>``, so the Fish update follows
``-grad [ sum_i L_i - (alpha/2) sum_{i<j} <g_i, g_j> ]``: it descends the summed loss while
*increasing* the inner products of the domains' gradients (gradient matching), without the
second-order derivatives that optimizing that objective directly needs.

Here the inner loop runs on a functional copy of the parameters (``torch.func.functional_call``,
no ``deepcopy`` of the module) and the outer step is taken by any optimizer:
:func:`fish_backward` adds ``theta - theta_tilde`` to ``.grad``, so ``torch.optim.SGD(lr=eps)``
then performs exactly ``theta <- theta + eps (theta_tilde - theta)``; :class:`Fish` does the
whole iteration. Memory: one copy of the parameters (``theta_tilde``) and one gradient.

Paper: "Gradient Matching for Domain Generalization", Yuge Shi, Jeffrey Seely, Philip H. S.
Torr, N. Siddharth, Awni Hannun, Nicolas Usunier, Gabriel Synnaeve, 2021 (ICLR 2022),
arXiv 2104.09937 (Algorithm 1, Fish, with SGD as the inner optimizer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from gradkit.errors import invalid_value

__all__ = ["Fish", "fish_backward", "fish_inner_loop"]

Batch = tuple[Any, Any]


def _trainable(model: nn.Module, params: Iterable[Tensor] | None) -> dict[str, Tensor]:
    named = dict(model.named_parameters())
    if params is None:
        return {n: p for n, p in named.items() if p.requires_grad}
    wanted = {id(p) for p in params}
    sel = {n: p for n, p in named.items() if id(p) in wanted}
    if len(sel) != len(wanted):
        raise ValueError("params must be parameters of model")
    return sel


def _order(
    num: int, order: Sequence[int] | None, shuffle: bool, generator: torch.Generator | None
) -> list[int]:
    if order is not None:
        order = [int(i) for i in order]
        if sorted(order) != list(range(num)):
            raise ValueError(f"order must be a permutation of 0..{num - 1}, got {order}")
        return order
    if shuffle:
        return torch.randperm(num, generator=generator).tolist()
    return list(range(num))


def fish_inner_loop(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Any], Tensor],
    domain_batches: Sequence[Batch],
    inner_lr: float,
    *,
    params: Iterable[Tensor] | None = None,
    order: Sequence[int] | None = None,
    shuffle: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, Tensor], Tensor]:
    """``theta_tilde`` after one inner SGD step per domain, and the inner losses (in domain
    index order, each measured before its step). ``domain_batches[i] = (inputs, targets)``;
    ``loss_fn(model(inputs), targets)`` must be the mean loss of the batch. The order is
    ``order`` if given, else a ``torch.randperm`` (from ``generator``) if ``shuffle``, else
    ``0..S-1``. ``model``'s parameters are not changed (buffers such as batch-norm statistics
    are, by the inner forward passes in training mode).
    """
    if not inner_lr > 0:
        raise invalid_value("inner_lr", inner_lr, "> 0")
    if len(domain_batches) == 0:
        raise ValueError("domain_batches must hold at least one (inputs, targets) batch")
    sel = _trainable(model, params)
    names = list(sel)
    tilde = {n: p.detach().clone() for n, p in sel.items()}
    losses = torch.zeros(len(domain_batches), dtype=torch.float64)
    for i in _order(len(domain_batches), order, shuffle, generator):
        inputs, targets = domain_batches[i]
        current = {n: t.requires_grad_(True) for n, t in tilde.items()}
        with torch.enable_grad():
            loss = loss_fn(functional_call(model, current, (inputs,)), targets)
            grads = torch.autograd.grad(loss, [current[n] for n in names], allow_unused=True)
        losses[i] = float(loss.detach())
        with torch.no_grad():
            tilde = {
                n: current[n].detach() if g is None else current[n].detach() - inner_lr * g
                for n, g in zip(names, grads)
            }
    return tilde, losses


def fish_backward(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Any], Tensor],
    domain_batches: Sequence[Batch],
    inner_lr: float,
    *,
    params: Iterable[Tensor] | None = None,
    order: Sequence[int] | None = None,
    shuffle: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Run Fish's inner loop and add ``theta - theta_tilde`` to each parameter's ``.grad``.

    Then ``torch.optim.SGD(params, lr=eps).step()`` is Fish's outer update
    ``theta <- theta + eps (theta_tilde - theta)``; any other optimizer may take the step
    instead. Returns the inner losses (one per domain). Arguments as :func:`fish_inner_loop`.
    """
    params = None if params is None else list(params)  # read twice below: not an iterator
    tilde, losses = fish_inner_loop(
        model,
        loss_fn,
        domain_batches,
        inner_lr,
        params=params,
        order=order,
        shuffle=shuffle,
        generator=generator,
    )
    sel = _trainable(model, params)
    with torch.no_grad():
        for n, p in sel.items():
            diff = p.detach() - tilde[n]
            if p.grad is None:
                p.grad = diff
            else:
                p.grad.add_(diff)
    return losses


class Fish:
    """Fish's whole iteration: ``theta <- theta + meta_lr * (theta_tilde - theta)`` in place.

    ``Fish(model, loss_fn, inner_lr=..., meta_lr=...)``; each ``fish.step(domain_batches)``
    takes one batch per domain, runs the inner loop in a random order (``generator`` or a
    ``seed`` makes it reproducible; ``shuffle=False`` keeps the given order) and updates the
    weights. Returns the inner losses. Defaults: ``meta_lr = 0.5`` and ``inner_lr = 1e-3``
    (ours; the paper tunes both per dataset).

    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0) and None
    >>> model = nn.Linear(3, 1)
    >>> domains = [(torch.randn(8, 3), torch.randn(8, 1)) for _ in range(3)]
    >>> fish = Fish(model, nn.functional.mse_loss, inner_lr=0.05, meta_lr=0.5, seed=0)
    >>> losses = fish.step(domains)
    >>> losses.shape
    torch.Size([3])
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Any], Tensor],
        *,
        inner_lr: float = 1e-3,
        meta_lr: float = 0.5,
        params: Iterable[Tensor] | None = None,
        shuffle: bool = True,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if not inner_lr > 0:
            raise invalid_value("inner_lr", inner_lr, "> 0")
        if not meta_lr > 0:
            raise invalid_value("meta_lr", meta_lr, "> 0")
        if seed is not None and generator is not None:
            raise ValueError("give Fish a seed or a generator, not both")
        if seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        self.model, self.loss_fn = model, loss_fn
        self.inner_lr, self.meta_lr = float(inner_lr), float(meta_lr)
        self.params = None if params is None else list(params)
        self.shuffle, self.generator = shuffle, generator

    def step(self, domain_batches: Sequence[Batch], order: Sequence[int] | None = None) -> Tensor:
        """One Fish iteration on one batch per domain; returns the inner losses."""
        tilde, losses = fish_inner_loop(
            self.model,
            self.loss_fn,
            domain_batches,
            self.inner_lr,
            params=self.params,
            order=order,
            shuffle=self.shuffle,
            generator=self.generator,
        )
        with torch.no_grad():
            for n, p in _trainable(self.model, self.params).items():
                p.add_(tilde[n] - p, alpha=self.meta_lr)
        return losses

    def state_dict(self) -> dict[str, Any]:
        return {} if self.generator is None else {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = sorted(set(state) - {"generator"})
        if unknown:
            raise ValueError(f"not a Fish state dict: unknown keys {unknown}")
        if "generator" in state:
            if self.generator is None:
                self.generator = torch.Generator()
            self.generator.set_state(state["generator"])
