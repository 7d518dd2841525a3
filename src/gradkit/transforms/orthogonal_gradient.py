"""⊥Grad: remove from each gradient its component along the weights."""

from __future__ import annotations

import torch
from torch import Tensor

from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList

__all__ = ["OrthogonalGradient", "orthogonal_to_weights"]

#: the authors' guard against a zero denominator (``w.w + 1e-30``, ``||g_perp|| + 1e-30``)
_TINY = 1e-30
#: with ``rescale``, a remainder ``||g_perp|| <= _ROUNDING * eps * ||g||`` counts as zero
_ROUNDING = 16


def _real(t: Tensor) -> Tensor:
    """A real tensor with the same numbers (a complex tensor's real view), fp32 at least."""
    if t.is_complex():
        t = torch.view_as_real(t)
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    return t


def orthogonal_to_weights(
    updates: TensorList, params: TensorList, *, rescale: bool = True
) -> list[Tensor]:
    """Per tensor: ``g_perp = g - (<w, g> / (<w, w> + 1e-30)) w``, then, if ``rescale``,
    ``g_perp * ||g|| / (||g_perp|| + 1e-30)``; a remainder at rounding level,
    ``||g_perp|| <= 16 eps ||g||`` (``g`` parallel to ``w``, or a one-element tensor), is set to
    zero instead of being rescaled (the authors' code would blow rounding noise up to ``||g||``).

    Inner products and norms run over all entries of each tensor (complex tensors as their real
    view), in float32 at least; the result has the update's dtype. A zero weight tensor leaves
    its update unchanged.
    """
    out = []
    for g, w in zip(updates, params):
        g32, w32 = _real(g), _real(w)
        coef = (w32 * g32).sum() / ((w32 * w32).sum() + _TINY)
        perp = g32 - coef * w32
        if rescale:
            g_norm, p_norm = torch.linalg.vector_norm(g32), torch.linalg.vector_norm(perp)
            # a remainder at rounding level (g parallel to w, or a one-element tensor) is no
            # direction: it stays ~0 instead of being blown up to ||g||
            noise = _ROUNDING * torch.finfo(perp.dtype).eps * g_norm
            perp = perp * torch.where(p_norm > noise, g_norm / (p_norm + _TINY), 0.0)
        if g.is_complex():
            perp = torch.view_as_complex(perp.to(torch.view_as_real(g).dtype).contiguous())
        out.append(perp.to(g.dtype))
    return out


class OrthogonalGradient(GradientTransformation):
    """⊥Grad: the gradient with its component along the current weights removed, per tensor.

    For each parameter tensor ``w`` (flattened) with update ``g``::

        g_perp = g - (w.g / (w.w + 1e-30)) w
        g_perp <- g_perp * ||g|| / (||g_perp|| + 1e-30)      # rescale=True (the default)
                                      # (0 if ||g_perp|| <= 16 eps ||g||: rounding, no direction)

    so that ``<g_perp, w> = 0``: a step ``w - lr g_perp`` cannot grow or shrink the weights
    along their own direction to first order, the "naive loss minimization" that scales the
    logits without changing predictions. The projection is per parameter tensor (per layer
    weight and per bias), as in the authors' code. ``rescale=True`` keeps each tensor's
    gradient norm, as the authors' code does; the paper's equation is the projection alone
    (``rescale=False``). Put it at the head of a chain, before moments: ``⊥AdamW`` is
    ``chain(OrthogonalGradient(), ScaleByAdam(), decoupled_weight_decay(),
    ScaleByLearningRate())`` (registered as ``perp_adamw``).

    Per-tensor reductions: a loop over tensors, or on a flat buffer segmented reductions over
    all tensors at once (``ctx.segments``). Complex parameters are projected as their real view
    (they never reach a flat buffer).

    Paper: "Grokking at the Edge of Numerical Stability", Lucas Prieto, Melih Barsbey, Pedro
    A. M. Mediano, Tolga Birdal, 2025 (ICLR), arXiv 2501.04697.
    """

    segments = "tensors"

    def __init__(self, *, rescale: bool = True) -> None:
        if not isinstance(rescale, bool):
            raise TypeError(f"rescale must be a bool, got {type(rescale).__name__}")
        self.rescale = rescale

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        if ctx.segments is not None:
            g, w, seg = updates[0], params[0], ctx.segments
            g32, w32 = _real(g), _real(w)
            coef = seg.tensor_sum(w32 * g32) / (seg.tensor_sum(w32 * w32) + _TINY)
            perp = g32 - seg.expand(coef) * w32
            if self.rescale:
                g_norm, p_norm = seg.tensor_norm(g32), seg.tensor_norm(perp)
                noise = _ROUNDING * torch.finfo(perp.dtype).eps * g_norm
                perp = perp * seg.expand(
                    torch.where(p_norm > noise, g_norm / (p_norm + _TINY), 0.0)
                )
            return ctx.owned([perp.to(g.dtype)])
        return ctx.owned(orthogonal_to_weights(updates, params, rescale=self.rescale))

    def __repr__(self) -> str:
        return f"OrthogonalGradient(rescale={self.rescale})"
