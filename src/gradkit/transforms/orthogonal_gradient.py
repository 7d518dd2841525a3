"""⊥Grad: remove from each gradient its component along the weights."""

from __future__ import annotations

from collections.abc import Callable

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
        perp = _remove_weight_component(
            _real(g), _real(w), rescale=rescale, total=torch.sum,
            norm=torch.linalg.vector_norm, spread=lambda x: x,
        )  # fmt: skip
        if g.is_complex():
            perp = torch.view_as_complex(perp.to(torch.view_as_real(g).dtype).contiguous())
        out.append(perp.to(g.dtype))
    return out


def _remove_weight_component(
    g32: Tensor,
    w32: Tensor,
    *,
    rescale: bool,
    total: Callable[[Tensor], Tensor],
    norm: Callable[[Tensor], Tensor],
    spread: Callable[[Tensor], Tensor],
) -> Tensor:
    """The rule of :func:`orthogonal_to_weights` for one tensor, or for all tensors of a flat
    buffer at once: ``total`` sums and ``norm`` takes the norm per tensor, ``spread`` broadcasts
    per-tensor values back to the entries (plain reductions and no broadcast for one tensor;
    segmented ones on a flat buffer)."""
    coef = total(w32 * g32) / (total(w32 * w32) + _TINY)
    perp = g32 - spread(coef) * w32
    if rescale:
        g_norm, p_norm = norm(g32), norm(perp)
        # a remainder at rounding level (g parallel to w, or a one-element tensor) is no
        # direction: it stays ~0 instead of being blown up to ||g||
        noise = _ROUNDING * torch.finfo(perp.dtype).eps * g_norm
        perp = perp * spread(torch.where(p_norm > noise, g_norm / (p_norm + _TINY), 0.0))
    return perp


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
            g, seg = updates[0], ctx.segments
            perp = _remove_weight_component(
                _real(g), _real(params[0]), rescale=self.rescale, total=seg.tensor_sum,
                norm=seg.tensor_norm, spread=seg.expand,
            )  # fmt: skip
            return ctx.owned([perp.to(g.dtype)])
        return ctx.owned(orthogonal_to_weights(updates, params, rescale=self.rescale))

    def __repr__(self) -> str:
        return f"OrthogonalGradient(rescale={self.rescale})"
