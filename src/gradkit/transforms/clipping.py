"""Clipping by the global norm of all updates of a group."""

from __future__ import annotations

import torch

from gradkit.core.hyperparams import interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList

__all__ = ["ClipByGlobalNorm", "global_norm"]


def global_norm(tensors: TensorList) -> torch.Tensor:
    """The l2 norm of all tensors together, as a 0-dim float32 tensor (no host sync)."""
    norms = torch._foreach_norm(tensors)
    return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))


class ClipByGlobalNorm(GradientTransformation):
    """Scale the updates by ``min(1, max_norm / (||u|| + 1e-6))``, ``||u||`` over the whole group.

    The same rule as ``torch.nn.utils.clip_grad_norm_``, applied per param group. ``max_norm``
    None disables it. Pascanu et al., "On the difficulty of training recurrent neural networks",
    arXiv 1211.5063.
    """

    def __init__(self, default: float | None = 1.0, *, key: str = "max_norm") -> None:
        self.key = key
        self.hyperparameters = (interval(key, default, 0.0, low_open=True, allow_none=True),)

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        max_norm = ctx.group[self.key]
        if max_norm is None:
            return updates
        norm = global_norm(updates)
        coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        out = ctx.writable(updates)
        torch._foreach_mul_(out, coef.to(out[0].device))
        return out

    def __repr__(self) -> str:
        return f"ClipByGlobalNorm(key={self.key!r})"
