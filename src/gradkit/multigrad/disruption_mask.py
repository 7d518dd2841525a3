"""Disruption Masking with normalization: unlearn only where it does not disrupt retention.

Two gradients of the same parameters: ``u``, of the unlearning loss (the loss whose decrease
removes the unwanted knowledge, e.g. the negative entropy or the negated cross-entropy on the
forget set), and ``r``, of the retain loss (e.g. cross-entropy on data to keep). Both are
gradients of losses to *minimise*. The update keeps ``u`` only on the coordinates where its
sign agrees with ``r``'s, after dividing ``u`` by its norm over all parameters::

    mask = (sign(u) == sign(r))                      # elementwise
    d    = mask * u / ||u||                          # ||u||: the unmasked norm, all parameters
    .grad = d;  x <- x - lr * d                      # (SGD: the paper's update)

Every kept coordinate moves against ``r`` as well, so ``<d, r> >= 0``: to first order the step
never increases the retain loss ("all updates are non-disruptive"). The normalization makes the
step size independent of the unlearning loss's scale, which grows as unlearning progresses.

With ``retain_momentum = beta > 0`` the mask uses a running average of retain gradients,
``a <- beta a + (1 - beta) r`` (what the authors' code does, ``beta = 0.9`` there), instead of
the current one; the first-order guarantee then holds against ``a``.

Paper: "Robust LLM Unlearning with MUDMAN: Meta-Unlearning with Disruption Masking And
Normalization", Filip Sondej, Yushi Yang, Mikołaj Kniejski, Marcel Windys, 2025,
arXiv 2506.12484. Only the masking and normalization are here; MUDMAN's meta-learning (an
adversary re-learning the forgotten data from a fork of the weights) is not.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit.errors import invalid_value
from gradkit.multigrad._backward import MultiGradInfo, backward
from gradkit.multigrad.aggregators import Aggregator

__all__ = ["DisruptionMask", "disruption_mask_backward", "disruption_masked_update"]


def _flat_norm(tensors: Sequence[Tensor]) -> float:
    """The norm of all ``tensors`` together, accumulated in float64 on their device (one host
    synchronization, no copy of the gradients to the host)."""
    if not tensors:
        return 0.0
    squares = [
        torch.linalg.vector_norm(t.detach(), dtype=torch.float64).square().to(tensors[0].device)
        for t in tensors
    ]
    return float(torch.stack(squares).sum().sqrt())


def disruption_masked_update(
    unlearn_grads: Sequence[Tensor], retain_grads: Sequence[Tensor], *, normalize: bool = True
) -> list[Tensor]:
    """``mask * u / ||u||`` with ``mask = (sign(u) == sign(r))``, per tensor (see the module).

    ``||u||`` is the norm of the *unmasked* unlearning gradient over all tensors together; a zero
    ``u`` gives zeros. ``normalize=False`` returns ``mask * u``. Returns new tensors.
    """
    if len(unlearn_grads) != len(retain_grads):
        raise ValueError(
            f"unlearn_grads has {len(unlearn_grads)} tensors, retain_grads {len(retain_grads)}"
        )
    for u, r in zip(unlearn_grads, retain_grads):
        if u.shape != r.shape:
            raise ValueError(
                f"an unlearning gradient of shape {tuple(u.shape)} is paired with a retain "
                f"gradient of shape {tuple(r.shape)}"
            )
    scale = 1.0
    if normalize:
        norm = _flat_norm(unlearn_grads)
        scale = 0.0 if norm == 0.0 else 1.0 / norm
    return [
        torch.where(torch.sign(u) == torch.sign(r), u * scale, torch.zeros_like(u))
        for u, r in zip(unlearn_grads, retain_grads)
    ]


class DisruptionMask(Aggregator):
    """Disruption Masking as an aggregator over a two-row Jacobian: row 0 the unlearning
    gradient ``u``, row 1 the retain gradient ``r``; returns ``mask * u / ||u||``.

    Use it with :func:`gradkit.multigrad.backward` (``losses = [unlearn_loss, retain_loss]``)
    or :func:`disruption_mask_backward`. ``retain_momentum`` (``[0, 1)``, default 0: the current
    retain gradient) masks with a running average of retain gradients instead; its state is
    saved by ``state_dict``. ``normalize=False`` drops the normalization (an ablation).
    ``last_kept`` is the fraction of coordinates the latest call kept.

    >>> import torch
    >>> u = torch.tensor([3.0, -4.0, 1.0, 0.0])
    >>> r = torch.tensor([1.0, 2.0, 5.0, -1.0])
    >>> DisruptionMask()([torch.stack([u, r])])[0]     # keeps coordinates 0 and 2, / ||u|| = 5.1
    tensor([0.5883, 0.0000, 0.1961, 0.0000])
    """

    last_kept: float | None = None

    def __init__(self, *, retain_momentum: float = 0.0, normalize: bool = True) -> None:
        if not 0.0 <= retain_momentum < 1.0:
            raise invalid_value("retain_momentum", retain_momentum, "in [0, 1)")
        self.retain_momentum = float(retain_momentum)
        self.normalize = bool(normalize)
        self.retain_average: list[Tensor] | None = None

    def __call__(
        self,
        jacobian: Sequence[Tensor],
        *,
        losses: Tensor | None = None,
        params: Sequence[Tensor] | None = None,
    ) -> list[Tensor]:
        if len(jacobian) == 0:
            raise ValueError("jacobian must hold at least one parameter's rows")
        for jac in jacobian:
            if jac.dim() == 0 or jac.shape[0] != 2:
                raise ValueError(
                    "DisruptionMask needs exactly two gradients (rows): the unlearning gradient "
                    f"and the retain gradient; got a tensor of shape {tuple(jac.shape)}"
                )
        unlearn = [jac[0] for jac in jacobian]
        retain = [jac[1] for jac in jacobian]
        if self.retain_momentum > 0.0:
            beta = self.retain_momentum
            if self.retain_average is None:
                self.retain_average = [torch.zeros_like(r) for r in retain]
            elif [a.shape for a in self.retain_average] != [r.shape for r in retain]:
                raise ValueError("the parameters changed shape since the retain average started")
            for a, r in zip(self.retain_average, retain):
                a.mul_(beta).add_(r, alpha=1.0 - beta)
            retain = self.retain_average
        out = disruption_masked_update(unlearn, retain, normalize=self.normalize)
        kept = torch.stack([(o != 0).sum().to(out[0].device) for o in out]).sum() if out else 0
        self.last_kept = int(kept) / max(1, sum(o.numel() for o in out))  # one synchronization
        return out

    def state_dict(self) -> dict[str, Any]:
        if self.retain_average is None:
            return {}
        return {"retain_average": [a.clone() for a in self.retain_average]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = set(state) - {"retain_average"}
        if unknown:
            raise ValueError(f"DisruptionMask state has unknown keys {sorted(unknown)}")
        avg = state.get("retain_average")
        self.retain_average = None if avg is None else [a.clone() for a in avg]

    def __repr__(self) -> str:
        return f"DisruptionMask(retain_momentum={self.retain_momentum}, normalize={self.normalize})"


def disruption_mask_backward(
    unlearn_loss: Tensor,
    retain_loss: Tensor,
    params: Iterable[Tensor],
    aggregator: DisruptionMask | None = None,
) -> MultiGradInfo:
    """Two backward passes (unlearning loss, retain loss) and the masked, normalized unlearning
    gradient added to each ``p.grad``; then step any optimizer (SGD is the paper's). Memory: two
    gradient copies of ``params``. Pass the same ``aggregator`` every step to keep its retain
    average (``retain_momentum > 0``).
    """
    return backward(
        [unlearn_loss, retain_loss],
        DisruptionMask() if aggregator is None else aggregator,
        params,
    )
