"""Loss functions: StableMax and its cross-entropy.

StableMax replaces softmax's ``exp`` by a function that grows linearly for positive inputs and
decays like ``1/|x|`` for negative ones::

    s(x) = x + 1         (x >= 0)
    s(x) = 1 / (1 - x)   (x < 0)
    StableMax(z)_i = s(z_i) / sum_j s(z_j)

``s`` is continuous with a continuous first derivative at 0 (both branches give ``s = 1``,
``s' = 1``), positive and increasing. Softmax's probabilities of the wrong classes fall like
``exp(-margin)``: in float32 the correct class's probability rounds to exactly 1 (loss and its
logit's gradient exactly 0) once it leads by about 17, and every gradient is exactly 0 once it
leads by about 104 ("Softmax Collapse"). StableMax's fall only polynomially in the margin, so
the loss and its gradients stay nonzero far longer and learning goes on.

Paper: "Grokking at the Edge of Numerical Stability", Lucas Prieto, Melih Barsbey, Pedro A. M.
Mediano, Tolga Birdal, 2025 (ICLR), arXiv 2501.04697.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["log_stablemax", "stablemax", "stablemax_cross_entropy", "stablemax_s"]

_REDUCTIONS = ("mean", "sum", "none")


def stablemax_s(x: Tensor) -> Tensor:
    """``s(x) = x + 1`` for ``x >= 0``, ``1 / (1 - x)`` for ``x < 0``, elementwise.

    Each branch is evaluated on inputs clamped to its own side of 0, so the branch not taken
    never produces an infinity (the authors' ``torch.where`` over ``1/(1 - x + 1e-30)`` makes
    a NaN gradient at ``x = 1``); the values are the same.
    """
    return torch.where(x >= 0, x.clamp(min=0) + 1, 1 / (1 - x.clamp(max=0)))


def stablemax(logits: Tensor, dim: int = -1) -> Tensor:
    """``s(z_i) / sum_j s(z_j)`` along ``dim``: probabilities, like ``torch.softmax``."""
    s = stablemax_s(logits)
    return s / s.sum(dim=dim, keepdim=True)


def log_stablemax(logits: Tensor, dim: int = -1) -> Tensor:
    """``log s(z_i) - log sum_j s(z_j)`` along ``dim``."""
    s = stablemax_s(logits)
    return torch.log(s) - torch.log(s.sum(dim=dim, keepdim=True))


def stablemax_cross_entropy(
    logits: Tensor, target: Tensor, *, reduction: str = "mean", dtype: torch.dtype | None = None
) -> Tensor:
    """Cross-entropy with StableMax in place of softmax: ``-log StableMax(z)_y``.

    ``logits``: ``[N, C]``; ``target``: ``[N]`` class indices. ``reduction``: ``"mean"``,
    ``"sum"`` or ``"none"``. Computed in ``dtype`` if given, else in the logits' dtype (the
    authors' code computes it in float64: pass ``dtype=torch.float64`` for that).

    >>> import torch
    >>> stablemax_cross_entropy(torch.tensor([[1.0, -1.0, 0.0]]), torch.tensor([0]))
    tensor(0.5596)
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape [N, C], got {tuple(logits.shape)}")
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise ValueError(
            f"target must hold integer class indices (soft labels are not supported), got "
            f"dtype {target.dtype}"
        )
    if target.shape != logits.shape[:1]:
        raise ValueError(
            f"target must have shape [N] = {tuple(logits.shape[:1])} for logits of shape "
            f"{tuple(logits.shape)}, got {tuple(target.shape)}"
        )
    # the range check reads the targets on the host: on CPU only (on a GPU it would synchronize
    # every call; an index out of range there stops at the gather's device-side check)
    on_cpu = target.device.type == "cpu"
    if (
        on_cpu
        and target.numel()
        and (int(target.min()) < 0 or int(target.max()) >= logits.shape[1])
    ):
        raise ValueError(
            f"target class indices must lie in [0, {logits.shape[1] - 1}], got "
            f"[{int(target.min())}, {int(target.max())}]"
        )
    if dtype is not None:
        logits = logits.to(dtype)
    logp = log_stablemax(logits, dim=-1)
    picked = -logp.gather(1, target.to(torch.int64).reshape(-1, 1)).squeeze(1)
    if reduction == "mean":
        return picked.mean()
    if reduction == "sum":
        return picked.sum()
    return picked
