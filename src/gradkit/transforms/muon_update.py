"""Muon's matrix step: momentum, orthogonalization and scaling, the one implementation.

For every matrix ``P`` of the group, with ``G`` its gradient (Jordan et al., "Muon: An optimizer
for hidden layers in neural networks", 2024, https://kellerjordan.github.io/posts/muon/):

    M <- mu M + (1 - mu) G                          (EMA momentum, ``M_0 = 0``)
    U  = (1 - mu) G + mu M   if nesterov   else M
    step = -lr * shape_scale(P) * NS_steps(U / ||U||_F)

``NS_steps`` is the quintic Newton-Schulz iteration of :mod:`gradkit.transforms.orthogonalize`.
Matrices whose views have the same shape in wide orientation (a ``3072x768`` matrix joins the
``768x3072`` ones, transposed) are stacked and iterated together: one function per such bucket
updates the momenta, forms the look-ahead, stacks, normalizes, casts to the iteration dtype and
runs the iteration; with ``fused`` it is compiled, one compiled copy per bucket shape, held by
this transform (so by one optimizer: never shared by the process).

Where the orthogonalization runs is a parameter, ``orthogonalize_on``:
:class:`OrthogonalizeLocally` (every matrix on this process: single device) or the rank-sharded
placement of :mod:`gradkit.distributed` (each matrix by one owner rank, results exchanged: DDP
and FSDP2). The rule, the state (``momentum_buffer``) and the checkpoints are the same for all.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit.core.hyperparams import flag, interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList
from gradkit.transforms.orthogonalize import (
    _NS_STEPS,
    _SHAPE_SCALE,
    QUINTIC,
    CompileCache,
    _deprecated_compile_flag,
    _normalized_ns,
    compile_backend,
    shape_scale,
)

__all__ = ["MuonUpdate", "OrthogonalizeLocally"]


class OrthogonalizeLocally:
    """Placement of the orthogonalization: every matrix on this process (single device).

    A placement tells :class:`MuonUpdate` which matrices this process orthogonalizes
    (:meth:`owned`), how to obtain the whole matrix of a sharded tensor (:meth:`is_shard`,
    :meth:`full`), and how the steps computed here reach every process (:meth:`share`).
    ``local_count`` counts the matrices orthogonalized on this process.
    """

    def __init__(self) -> None:
        self.local_count = 0

    def owned(self, updates: Sequence[Tensor]) -> list[bool]:
        """For each update: True if this process orthogonalizes it."""
        return [True] * len(updates)

    def is_shard(self, u: Tensor) -> bool:
        """True if ``u`` holds only this process's shard of the matrix (a DTensor)."""
        return False

    def full(self, u: Tensor) -> Tensor:
        """The whole matrix of a sharded ``u`` (a collective: every process calls it)."""
        return u

    def share(self, updates: Sequence[Tensor], steps: list[Tensor | None]) -> list[Tensor]:
        """Every process's steps, from the steps computed here (None where another owns it)."""
        return steps  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _matrix_step(
    grads: list[Tensor],
    bufs: list[Tensor] | None,
    w: Any,
    mu: Any,
    nesterov: bool,
    transpose: tuple[bool, ...],
    dtype: torch.dtype,
    eps: float,
    steps: int,
    a: float,
    b: float,
    c: float,
) -> Tensor:
    """One bucket: momentum (if ``bufs``), look-ahead, stack (wide), normalize, cast, iterate.

    ``w = 1 - mu``; Python floats on the eager path, 0-d tensors under ``torch.compile`` (a
    momentum schedule must not recompile). Without ``bufs`` the ``grads`` are the finished
    look-ahead updates.
    """
    if bufs is None:
        us = list(grads)
    else:
        if isinstance(w, Tensor):
            for g, m in zip(grads, bufs):
                m.copy_(m + (g - m) * w)
        else:
            torch._foreach_lerp_(bufs, grads, w)
        us = [g * w + m * mu for g, m in zip(grads, bufs)] if nesterov else list(bufs)
    mats = [u.reshape(u.shape[0], -1) for u in us]
    x = torch.stack([m.mT if t else m for m, t in zip(mats, transpose)])
    return _normalized_ns(x, dtype, eps, steps, a, b, c)


def _matrix_dims(shape: Sequence[int]) -> tuple[int, int]:
    rows = shape[0] if len(shape) else 1
    cols = math.prod(shape[1:]) if len(shape) > 1 else 1
    return rows, cols


class MuonUpdate(GradientTransformation):
    """Muon's momentum + orthogonalization + learning-rate step (see the module docstring).

    Hyperparameters: ``lr``, ``momentum`` (mu, in [0, 1)), ``nesterov``, ``ns_steps``, ``scale``.
    State: ``momentum_buffer``. Returns the final step (the last stage of a chain). Complex
    parameters are refused.

    Args:
        coefficients: ``(a, b, c)`` of the Newton-Schulz polynomial (quintic by default).
        dtype: the iteration dtype; None: bfloat16 on CUDA, float32 elsewhere. With float64 the
            normalization runs in float64 too: no rounding to float32 on the way.
        fused: compile each bucket's function (same math, faster): None (default) on CUDA only,
            True everywhere, False never. ``compile`` is its deprecated name.
        eps: lower bound of the Frobenius norm used to normalize.
        orthogonalize_on: where the orthogonalization runs (default
            :class:`OrthogonalizeLocally`; :class:`gradkit.distributed.OrthogonalizeOnRanks`
            shares it among ranks).
    """

    flat_ok = False
    complex_ok = False
    hyperparameters = (
        interval("lr", 0.02, 0.0),
        interval("momentum", 0.95, 0.0, 1.0, high_open=True),
        flag("nesterov", True),
        _NS_STEPS,
        _SHAPE_SCALE,
    )

    def __init__(
        self,
        coefficients: Sequence[float] = QUINTIC,
        dtype: torch.dtype | None = None,
        fused: bool | None = None,
        eps: float = 1e-7,
        *,
        orthogonalize_on: OrthogonalizeLocally | None = None,
        compile: bool | None = None,
    ) -> None:
        if len(coefficients) != 3:
            raise ValueError(
                f"Invalid coefficients: {coefficients!r}; need three numbers (a, b, c)"
            )
        self.coefficients = tuple(float(c) for c in coefficients)
        self.dtype = dtype
        self.fused = _deprecated_compile_flag(fused, compile, "compile")
        self.eps = float(eps)
        self.orthogonalize_on = orthogonalize_on or OrthogonalizeLocally()
        self.cache = CompileCache()

    def init(self, params: TensorList) -> State:
        return {"momentum_buffer": [torch.zeros_like(p) for p in params]}

    def _compiled(self, device: torch.device) -> bool:
        return device.type == "cuda" if self.fused is None else bool(self.fused)

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        grp = ctx.group
        lr = grp["lr"]
        lr = lr.item() if isinstance(lr, Tensor) else float(lr)
        mu, nesterov = float(grp["momentum"]), bool(grp["nesterov"])
        steps, scale = int(grp["ns_steps"]), grp["scale"]
        bufs = state["momentum_buffer"]
        place = self.orthogonalize_on
        n = len(updates)
        mine = place.owned(updates)
        shard = [place.is_shard(u) for u in updates]
        # matrices orthogonalized here from plain tensors take their momentum inside the bucket
        # function; the others (not owned, or sharded) take it here, on every process
        inside = [mine[i] and not shard[i] for i in range(n)]
        sources: list[Tensor | None] = [None] * n
        rest = [i for i in range(n) if not inside[i]]
        if rest:
            g, m = [updates[i] for i in rest], [bufs[i] for i in rest]
            torch._foreach_lerp_(m, g, 1.0 - mu)
            if nesterov:
                us = torch._foreach_mul(g, 1.0 - mu)
                torch._foreach_add_(us, m, alpha=mu)
            else:
                us = m
            for i, u in zip(rest, us):
                if shard[i]:
                    u = place.full(u)
                if mine[i]:
                    sources[i] = u
        buckets: dict[tuple, list[int]] = defaultdict(list)
        tall = [False] * n
        for i in range(n):
            if not mine[i]:
                continue
            u = updates[i] if inside[i] else sources[i]
            rows, cols = _matrix_dims(u.shape)
            tall[i] = rows > cols
            buckets[(min(rows, cols), max(rows, cols), u.device, u.dtype, inside[i])].append(i)
        out: list[Tensor | None] = [None] * n
        a, b, c = self.coefficients
        for (m_, n_, device, in_dtype, with_momentum), idx in buckets.items():
            dtype = self.dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
            flags = tuple(tall[i] for i in idx)
            w, mu_ = 1.0 - mu, mu
            fn = _matrix_step
            if self._compiled(device):
                key = (len(idx), m_, n_, flags, device, in_dtype, dtype, with_momentum, nesterov)
                fn = self.cache.get(
                    _matrix_step, key, compile_backend(ctx), dynamic=False, fullgraph=True
                )
                w = torch.tensor(w, dtype=torch.float32, device=device)
                mu_ = torch.tensor(mu, dtype=torch.float32, device=device)
            if with_momentum:
                src, mom = [updates[i] for i in idx], [bufs[i] for i in idx]
            else:
                src, mom = [sources[i] for i in idx], None
            x = fn(src, mom, w, mu_, nesterov, flags, dtype, self.eps, steps, a, b, c)
            x = x.to(in_dtype)
            factors = [-lr * shape_scale(src[j].shape, scale) for j in range(len(idx))]
            if len(set(factors)) == 1:
                x.mul_(factors[0])
            else:
                x.mul_(torch.tensor(factors, dtype=x.dtype, device=x.device)[:, None, None])
            for j, i in enumerate(idx):
                r = x[j].mT if flags[j] else x[j]
                shape = src[j].shape
                out[i] = r.reshape(shape) if len(shape) != 2 else r
        place.local_count += sum(mine)
        return ctx.owned(place.share(updates, out))

    def __repr__(self) -> str:
        return (
            f"MuonUpdate(coefficients={self.coefficients}, dtype={self.dtype}, "
            f"fused={self.fused}, orthogonalize_on={self.orthogonalize_on!r})"
        )
