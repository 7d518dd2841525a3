"""AdamP / SGDP: remove the radial (norm-increasing) part of the update of scale-invariant weights."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch.nn.functional import cosine_similarity

from gradkit.core.hyperparams import interval
from gradkit.core.segments import Segments
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList

__all__ = ["ProjectRadial"]


def _scalar(value: object) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


class ProjectRadial(GradientTransformation):
    """The projection of AdamP and SGDP, with their scaled decoupled weight decay.

    For each parameter ``w`` with two or more dimensions, first per output channel (rows of
    ``w.reshape(w.shape[0], -1)``), then for the whole tensor: if the largest
    ``|cos(g, w)|`` is below ``delta / sqrt(d)`` (``d`` = size of a row, resp. of the tensor)
    the weight is taken as scale-invariant and the radial part is removed from the update,
    ``u <- u - w_hat <w_hat, u>`` with ``w_hat = w / (||w|| + eps)`` per row (resp. tensor), and
    its weight decay is multiplied by ``wd_ratio``. Then (decoupled) ``w <- (1 - lr * wd * r) w``
    with ``r`` = 1 or ``wd_ratio``, divided by ``1 - momentum`` when ``momentum_key`` is given
    (SGDP). ``g`` is the raw gradient of the step. Vectors and scalars are never projected.
    No host synchronization. On the per-tensor path a loop over the tensors; on a flat buffer
    the same rule with segmented reductions over all rows and tensors at once (``ctx.segments``;
    a fixed number of operations for any number of tensors).

    Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
    Weights", arXiv 2006.08217.
    """

    segments = "rows"
    hyperparameters = (
        interval("delta", 0.1, 0.0, low_open=True),
        interval("wd_ratio", 0.1, 0.0, 1.0),
        interval("eps", 1e-8, 0.0, low_open=True),
        interval("weight_decay", 0.0, 0.0),
    )

    def __init__(self, *, momentum_key: str | None = None, lr_key: str = "lr") -> None:
        self.momentum_key = momentum_key
        self.lr_key = lr_key

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        group = ctx.group
        delta, wd_ratio, eps = group["delta"], group["wd_ratio"], group["eps"]
        decay = _scalar(group[self.lr_key]) * group["weight_decay"]
        if self.momentum_key is not None:
            decay /= 1.0 - group[self.momentum_key]
        out = ctx.writable(updates)
        if ctx.segments is not None:
            self._project_flat(out[0], params[0], ctx.grads[0], ctx.segments, group, decay)
            return out
        for p, g, u in zip(params, ctx.grads, out):
            if p.dim() <= 1 or p.numel() == 0:
                if decay != 0:
                    p.mul_(1.0 - decay)
                continue
            rows = p.shape[0]
            shape = (-1,) + (1,) * (p.dim() - 1)
            p_rows, g_rows = p.reshape(rows, -1), g.reshape(rows, -1)
            cos_rows = cosine_similarity(g_rows, p_rows, dim=1, eps=eps).abs().max()
            cos_all = cosine_similarity(g.reshape(1, -1), p.reshape(1, -1), dim=1, eps=eps).abs()
            by_rows = cos_rows < delta / math.sqrt(p_rows.shape[1])
            invariant = by_rows | (cos_all[0] < delta / math.sqrt(p.numel()))
            norm = torch.where(by_rows, p_rows.norm(dim=1).view(shape), p.norm()).add_(eps)
            p_hat = p / norm
            inner = p_hat * u
            radial = torch.where(
                by_rows, inner.reshape(rows, -1).sum(dim=1).view(shape), inner.sum()
            )
            u.sub_(p_hat.mul_(radial).mul_(invariant))
            if decay != 0:
                ratio = torch.where(invariant, wd_ratio, 1.0).to(p.dtype)
                p.mul_(1.0 - decay * ratio)
        return out

    @staticmethod
    def _project_flat(
        u: torch.Tensor,
        p: torch.Tensor,
        g: torch.Tensor,
        seg: Segments,
        group: Mapping[str, Any],
        decay: float,
    ) -> None:
        """The rule of :meth:`update` on one flat buffer: per-row dot products and norms by
        segmented reductions, the choice per tensor, then one in-place pass over ``u``."""
        delta, wd_ratio, eps = group["delta"], group["wd_ratio"], group["eps"]
        pg, pp, gg = seg.row_sum(p * g), seg.row_sum(p * p), seg.row_sum(g * g)
        p_norm_r, g_norm_r = pp.sqrt(), gg.sqrt()
        cos_r = pg.abs() / (g_norm_r.clamp_min(eps) * p_norm_r.clamp_min(eps))
        p_norm_t, g_norm_t = seg.sum_rows(pp).sqrt(), seg.sum_rows(gg).sqrt()
        cos_t = seg.sum_rows(pg).abs() / (g_norm_t.clamp_min(eps) * p_norm_t.clamp_min(eps))
        by_rows = seg.max_rows(cos_r) < delta / seg.row_size.sqrt()
        invariant = seg.is_matrix & (by_rows | (cos_t < delta / seg.numel.sqrt()))
        # radial coefficient per row: <w_hat, u> / (||w|| + eps), over the row or the tensor
        pu = seg.row_sum(p * u)
        rows_by_rows = seg.to_rows(by_rows)
        norm_r = torch.where(rows_by_rows, p_norm_r, seg.to_rows(p_norm_t)) + eps
        radial_r = torch.where(rows_by_rows, pu, seg.to_rows(seg.sum_rows(pu))) / norm_r
        coef_r = torch.where(seg.to_rows(invariant), radial_r / norm_r, 0.0)
        u.addcmul_(p, seg.expand_rows(coef_r), value=-1.0)
        if decay != 0:
            ratio = torch.where(invariant, wd_ratio, 1.0).to(p.dtype)
            p.mul_(seg.expand(1.0 - decay * ratio))

    def __repr__(self) -> str:
        return f"ProjectRadial(momentum_key={self.momentum_key!r})"
