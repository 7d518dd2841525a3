"""AdamP / SGDP: remove the radial (norm-increasing) part of the update of scale-invariant weights."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch

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
    No host synchronization. The test and the coefficients are computed for all rows of all
    weights at once from row norms and dot products per weight (:func:`_scale_invariance`);
    on a flat buffer those come from segmented reductions (``ctx.segments``; a fixed number of
    operations for any number of tensors).

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
        decay = _scalar(group[self.lr_key]) * group["weight_decay"]
        if self.momentum_key is not None:
            decay /= 1.0 - group[self.momentum_key]
        if ctx.segments is not None:
            out = ctx.writable(updates)
            self._project_flat(out[0], params[0], ctx.grads[0], ctx.segments, group, decay)
            return out
        return self._project_lists(updates, params, ctx, decay)

    @staticmethod
    def _project_lists(
        updates: TensorList, params: TensorList, ctx: StepContext, decay: float
    ) -> TensorList:
        """Per weight: the row norms of the weight and its gradient and their row-wise dot
        products; the test for all rows of all weights at once (:func:`_scale_invariance`);
        then for the scale-invariant weights ``<w, u>`` per row and ``u - c_row * w``
        (:func:`_radial_coefficients`), in place when ``updates`` may be changed, else as new
        tensors for those weights only (the others pass through uncopied)."""
        group, grads = ctx.group, ctx.grads
        in_place = ctx.is_owned(updates)
        out = list(updates)
        matrices = [i for i, p in enumerate(params) if p.dim() >= 2 and p.numel() > 0]
        if matrices:
            rows = [
                (params[i].reshape(params[i].shape[0], -1), grads[i].reshape(grads[i].shape[0], -1),
                 updates[i].reshape(updates[i].shape[0], -1))
                for i in matrices
            ]  # fmt: skip
            norm, vecdot = torch.linalg.vector_norm, torch.linalg.vecdot
            p_norm = torch.cat([norm(w, dim=1) for w, _, _ in rows])
            g_norm = torch.cat([norm(g, dim=1) for _, g, _ in rows])
            pg = torch.cat([vecdot(w, g) for w, g, _ in rows])
            p0 = params[matrices[0]]
            seg = _row_segments(tuple(params[i].shape for i in matrices), p0.device, p0.dtype)
            by_rows, invariant, p_norm_t = _scale_invariance(pg, p_norm, g_norm, seg, group)
            # eagerly on a CPU a host read is free: project only the invariant weights (as the
            # authors' code does); elsewhere every weight, masked, without synchronizing
            if p0.device.type == "cpu" and not torch.compiler.is_compiling():
                projected = set(torch.nonzero(invariant).flatten().tolist())
            else:
                projected = set(range(len(matrices)))
            if projected:
                pu = torch.cat([
                    vecdot(w, u) if k in projected else w.new_zeros(w.shape[0])
                    for k, (w, _, u) in enumerate(rows)
                ])  # fmt: skip
                coef = _radial_coefficients(pu, p_norm, p_norm_t, by_rows, invariant, seg, group)
                sizes = [r[0].shape[0] for r in rows]
                for k, (i, (w, _, u), c) in enumerate(zip(matrices, rows, coef.split(sizes))):
                    if k not in projected:
                        continue
                    radial = w * c.unsqueeze(1)  # then a subtraction, not addcmul_, whose
                    # fused multiply-add would round otherwise than the traced graph does
                    if in_place:
                        u.sub_(radial)
                    else:
                        out[i] = radial.neg_().add_(u).view_as(updates[i])
        if decay != 0:
            factors: list[Any] = [1.0 - decay] * len(params)
            if matrices:
                for i, r in zip(
                    matrices, _decay_factors(invariant, decay, group, p0.dtype).unbind()
                ):
                    factors[i] = r
            for p, f in zip(params, factors):
                p.mul_(f)
        return ctx.owned(out) if in_place else out

    @staticmethod
    def _project_flat(
        u: torch.Tensor,
        p: torch.Tensor,
        g: torch.Tensor,
        seg: Segments,
        group: Mapping[str, Any],
        decay: float,
    ) -> None:
        """The rule on one flat buffer: the row-wise dot products by segmented reductions, then
        one in-place pass over ``u`` (vectors and scalars get coefficient 0)."""
        p_norm, g_norm = seg.row_sum(p * p).sqrt(), seg.row_sum(g * g).sqrt()
        by_rows, invariant, p_norm_t = _scale_invariance(
            seg.row_sum(p * g), p_norm, g_norm, seg, group
        )
        coef = _radial_coefficients(
            seg.row_sum(p * u), p_norm, p_norm_t, by_rows, invariant, seg, group
        )
        u.sub_(p * seg.expand_rows(coef))
        if decay != 0:
            p.mul_(seg.expand(_decay_factors(invariant, decay, group, p.dtype)))

    def __repr__(self) -> str:
        return f"ProjectRadial(momentum_key={self.momentum_key!r})"


def _scale_invariance(
    pg: torch.Tensor,
    p_norm: torch.Tensor,
    g_norm: torch.Tensor,
    seg: Segments,
    group: Mapping[str, Any],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cosine test, from per-row norms and dot products.

    Per row of every tensor: ``pg = <w, g>``, ``p_norm = ||w||``, ``g_norm = ||g||``. Returns,
    per tensor, whether the per-row test passed (``max_row |cos(g, w)| < delta / sqrt(row
    size)``), whether the tensor is taken as scale-invariant (a matrix passing the per-row test,
    or else the whole-tensor test ``|cos| < delta / sqrt(numel)``), and ``||w||``.
    """
    delta, eps = group["delta"], group["eps"]
    cos_rows = pg.abs() / (g_norm.clamp_min(eps) * p_norm.clamp_min(eps))
    p_norm_t = seg.sum_rows(p_norm * p_norm).sqrt()
    g_norm_t = seg.sum_rows(g_norm * g_norm).sqrt()
    cos_t = seg.sum_rows(pg).abs() / (g_norm_t.clamp_min(eps) * p_norm_t.clamp_min(eps))
    by_rows = seg.max_rows(cos_rows) < delta / seg.row_size.sqrt()
    invariant = seg.is_matrix & (by_rows | (cos_t < delta / seg.numel.sqrt()))
    return by_rows, invariant, p_norm_t


def _radial_coefficients(
    pu: torch.Tensor,
    p_norm: torch.Tensor,
    p_norm_t: torch.Tensor,
    by_rows: torch.Tensor,
    invariant: torch.Tensor,
    seg: Segments,
    group: Mapping[str, Any],
) -> torch.Tensor:
    """``c`` per row, so that the projection is ``u <- u - c w``: ``c = <w, u> / (||w|| +
    eps)^2`` over the row (per-row test passed) or over the tensor (only the whole-tensor test
    passed), 0 for tensors that are not scale-invariant. ``pu = <w, u>`` per row, the rest from
    :func:`_scale_invariance`."""
    rows_by_rows = seg.to_rows(by_rows)
    norm = torch.where(rows_by_rows, p_norm, seg.to_rows(p_norm_t)) + group["eps"]
    inner = torch.where(rows_by_rows, pu, seg.to_rows(seg.sum_rows(pu)))
    return torch.where(seg.to_rows(invariant), inner / (norm * norm), 0.0)


def _decay_factors(
    invariant: torch.Tensor, decay: float, group: Mapping[str, Any], dtype: torch.dtype
) -> torch.Tensor:
    """``1 - decay * r`` per tensor (``r = wd_ratio`` for invariant tensors, else 1), formed in
    float64 and rounded once to the parameters' ``dtype``."""
    one = torch.ones(invariant.shape, dtype=torch.float64, device=invariant.device)
    return (1.0 - decay * torch.where(invariant, one * group["wd_ratio"], one)).to(dtype)


def _row_segments(
    shapes: tuple[torch.Size, ...], device: torch.device, dtype: torch.dtype
) -> Segments:
    """Row boundaries of weights of these shapes (per-row and per-tensor fields only); cached,
    and built inline (as constants) in traced code, which cannot call the cache."""
    if torch.compiler.is_compiling():
        return Segments(shapes, device, dtype, rows=True, elements=False)
    return _cached_row_segments(shapes, device, dtype)


@functools.lru_cache(maxsize=64)
def _cached_row_segments(
    shapes: tuple[torch.Size, ...], device: torch.device, dtype: torch.dtype
) -> Segments:
    return Segments(shapes, device, dtype, rows=True, elements=False)
