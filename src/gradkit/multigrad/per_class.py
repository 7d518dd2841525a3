"""Per-class gradient normalization under class imbalance (PCNGD).

With class imbalance the full-batch gradient is dominated by the majority class, and a gradient
descent step can *increase* the loss of a minority class (the "minority initial drop"). PCNGD
gives every class the same say: each class's gradient is scaled to unit norm before they are
summed::

    f_l(x) = (1/n) sum_{i in class l} loss_i(x)          # class l's part of the mean loss
    d      = sum_l grad f_l(x) / ||grad f_l(x)||          # the norm over all parameters
    x     <- x - lr * d                                    # any optimizer steps on .grad = d

The ``1/n`` (rather than ``1/n_l``) scaling of ``f_l`` is the paper's; it cancels in the
normalization. With two classes ``d`` bisects the two class gradients, so its inner product
with each of them is ``>= 0`` (a common descent direction unless they point in opposite
directions).

Paper: "A Theoretical Analysis of the Learning Dynamics under Class Imbalance", Emanuele
Francazi, Marco Baity-Jesi, Aurelien Lucchi, 2023 (ICML), arXiv 2207.00391. The rule is the
PCNGD update of the paper and of the authors' code (the sum of unit-norm per-class full-batch
gradients; PCNSGD applies it to per-class mini-batches).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from gradkit.multigrad._backward import MultiGradInfo, backward
from gradkit.multigrad.aggregators import GramianAggregator

__all__ = ["PerClassNormalized", "per_class_backward", "per_class_losses"]


class PerClassNormalized(GramianAggregator):
    """``sum_l g_l / ||g_l||`` (``reduction="sum"``, the paper's) or its mean over classes.

    A Gramian-weighted aggregator: ``w_l = 1 / ||g_l||`` (``||g_l||^2`` is the Gramian's
    diagonal, summed over all parameters), ``w_l = 0`` for a class whose gradient is exactly zero.
    ``reduction="mean"`` divides by the number of rows ``k``. Use it with
    :func:`per_class_backward`, or with :func:`gradkit.multigrad.backward` /
    :func:`gradkit.multigrad.aggregate_into_grad` on any per-group Jacobian.

    >>> import torch
    >>> PerClassNormalized()([torch.tensor([[30.0, 40.0], [0.0, -2.0]])])[0]
    tensor([ 0.6000, -0.2000])
    """

    def __init__(self, *, reduction: str = "sum") -> None:
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        self.reduction = reduction

    def weights(self, gram: Tensor) -> Tensor:
        norms = gram.diagonal().clamp_min(0.0).sqrt()
        w = torch.where(norms > 0, 1.0 / norms, torch.zeros_like(norms))
        if self.reduction == "mean":
            w = w / gram.shape[0]
        return w

    def __repr__(self) -> str:
        return f"PerClassNormalized(reduction={self.reduction!r})"


def per_class_losses(
    per_example_losses: Tensor, labels: Tensor, *, classes: Sequence[int] | Tensor | None = None
) -> tuple[list[Tensor], Tensor]:
    """Split a ``[n]`` tensor of per-example losses into the classes' parts of the mean loss.

    Returns ``(losses, classes)``: ``losses[j] = sum_{i: labels_i = classes[j]} loss_i / n`` (so
    ``sum(losses)`` is the mean loss), one per class present in the batch (or per class of
    ``classes`` that is present), in increasing class order. Compute ``per_example_losses`` with
    ``reduction="none"`` from one forward pass.
    """
    if per_example_losses.dim() != 1:
        raise ValueError(
            "per_example_losses must be a 1-D tensor (use reduction='none'), got shape "
            f"{tuple(per_example_losses.shape)}"
        )
    labels = torch.as_tensor(labels, device=per_example_losses.device).reshape(-1)
    if labels.shape[0] != per_example_losses.shape[0]:
        raise ValueError(
            f"labels has {labels.shape[0]} entries for {per_example_losses.shape[0]} losses"
        )
    if labels.numel() == 0:
        raise ValueError("per_example_losses is empty")
    present = torch.unique(labels)
    if classes is not None:
        wanted = torch.as_tensor(classes, device=labels.device).reshape(-1)
        present = present[torch.isin(present, wanted)]
        if present.numel() == 0:
            raise ValueError("none of the given classes occurs in labels")
    n = per_example_losses.shape[0]
    losses = [per_example_losses[labels == c].sum() / n for c in present]
    return losses, present


def per_class_backward(
    per_example_losses: Tensor,
    labels: Tensor,
    params: Iterable[Tensor],
    aggregator: GramianAggregator | None = None,
    *,
    classes: Sequence[int] | Tensor | None = None,
    max_jacobian_bytes: int | None = None,
) -> MultiGradInfo:
    """PCNGD's backward: per-class gradients from one forward pass, normalized, summed into
    ``.grad``.

    Groups ``per_example_losses`` by ``labels`` (:func:`per_class_losses`), runs one backward
    pass per class present (``k`` passes, ``k`` gradient copies of ``params``; see
    :func:`gradkit.multigrad.backward`) and adds ``aggregator``'s combination (default
    :class:`PerClassNormalized`: ``sum_l g_l / ||g_l||``) to each ``p.grad``. Then step any
    optimizer. Classes absent from the batch contribute nothing.

    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0) and None
    >>> model = nn.Linear(3, 2)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> x, y = torch.randn(20, 3), torch.tensor([0] * 18 + [1] * 2)   # 9:1 imbalance
    >>> opt.zero_grad()
    >>> losses = nn.functional.cross_entropy(model(x), y, reduction="none")
    >>> info = per_class_backward(losses, y, model.parameters())
    >>> opt.step()
    >>> info.num_gradients, info.weights.shape     # one unit-norm gradient per class
    (2, torch.Size([2]))
    """
    losses, _ = per_class_losses(per_example_losses, labels, classes=classes)
    return backward(
        losses,
        PerClassNormalized() if aggregator is None else aggregator,
        params,
        max_jacobian_bytes=max_jacobian_bytes,
    )
