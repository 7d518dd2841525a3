"""Muon's whole matrix step in one transform, batched by shape (the fast path of ``muon``).

Numerically the same rule as ``chain(EMAMomentum, Orthogonalize, ScaleByLearningRate)``:

    m <- mu m + (1 - mu) g;   u = (1 - mu) g + mu m  (nesterov)  or  m
    step = -lr * shape_scale * NS(u)

but organized for speed: per bucket of same-shape matrices, one (compiled, on CUDA) function
updates the momenta, forms the Nesterov look-ahead, stacks, normalizes and casts to the
iteration dtype; one batched Newton-Schulz chain follows; the step is scaled in the iteration
dtype and returned as views of the batched result (the optimizer adds them to the parameters).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import Tensor

from gradkit.core.hyperparams import flag, interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList
from gradkit.transforms.orthogonalize import _NS_STEPS, _SHAPE_SCALE, QUINTIC, _ns_fn, shape_scale

__all__ = ["MuonUpdate"]

_PRE_COMPILED: dict[str, object] = {}


def _prepare(
    grads: list[Tensor],
    bufs: list[Tensor],
    mu: float,
    nesterov: bool,
    transpose: tuple[bool, ...],
    dtype: torch.dtype,
    eps: float,
) -> Tensor:
    """Momentum update, look-ahead, stack (wide orientation), Frobenius-normalize, cast."""
    torch._foreach_lerp_(bufs, grads, 1.0 - mu)
    if nesterov:
        us = [g * (1.0 - mu) + b * mu for g, b in zip(grads, bufs)]
    else:
        us = list(bufs)
    mats = [u.reshape(u.shape[0], -1) for u in us]
    x = torch.stack([m.mT if t else m for m, t in zip(mats, transpose)]).float()
    norm = torch.linalg.matrix_norm(x, keepdim=True).clamp_min(eps)
    return (x / norm).to(dtype)


def _prepare_fn(compiled: bool):
    if not compiled:
        return _prepare
    fn = _PRE_COMPILED.get("pre")
    if fn is None:
        fn = torch.compile(_prepare, dynamic=False)
        _PRE_COMPILED["pre"] = fn
    return fn


class MuonUpdate(GradientTransformation):
    """Muon's momentum + orthogonalization + learning-rate step, fused per shape bucket.

    Hyperparameters: ``lr``, ``momentum`` (mu), ``nesterov``, ``ns_steps``, ``scale``. Returns
    the final step (last stage of a chain). ``dtype``: iteration dtype (default bfloat16 on CUDA,
    float32 elsewhere); ``compile``: compile the per-bucket functions (default: on CUDA).
    """

    flat_ok = False
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
        compile: bool | None = None,
        eps: float = 1e-7,
    ) -> None:
        self.coefficients = tuple(float(c) for c in coefficients)
        self.dtype = dtype
        self.compile = compile
        self.eps = float(eps)

    def init(self, params: TensorList) -> State:
        return {"momentum_buffer": [torch.zeros_like(p) for p in params]}

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        grp = ctx.group
        lr = grp["lr"]
        lr = lr.item() if isinstance(lr, Tensor) else float(lr)
        mu, nesterov = float(grp["momentum"]), bool(grp["nesterov"])
        steps, scale = int(grp["ns_steps"]), grp["scale"]
        a, b, c = self.coefficients
        bufs = state["momentum_buffer"]
        # bucket by the matrix view in wide orientation: a tall matrix joins the wide matrices of
        # the transposed shape (3072x768 and 768x3072 share one batched iteration)
        buckets: dict[tuple, list[int]] = defaultdict(list)
        tall: list[bool] = []
        for i, u in enumerate(updates):
            rows = u.shape[0] if u.ndim else 1
            cols = math.prod(u.shape[1:]) if u.ndim > 1 else 1
            tall.append(rows > cols)
            buckets[(min(rows, cols), max(rows, cols), u.device, u.dtype)].append(i)
        out: list[Tensor | None] = [None] * len(updates)
        for (_, _, device, _), idx in buckets.items():
            compiled = device.type == "cuda" if self.compile is None else self.compile
            dtype = self.dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
            flags = tuple(tall[i] for i in idx)
            x = _prepare_fn(compiled)(
                [updates[i] for i in idx],
                [bufs[i] for i in idx],
                mu,
                nesterov,
                flags,
                dtype,
                self.eps,
            )
            x = _ns_fn(compiled)(x, steps, a, b, c)
            factors = {shape_scale(updates[i].shape, scale) for i in idx}
            if len(factors) == 1:
                x = x * (-lr * factors.pop())
            else:
                f = [-lr * shape_scale(updates[i].shape, scale) for i in idx]
                x = (
                    x
                    * torch.tensor(f, dtype=x.dtype).to(x.device, non_blocking=True)[:, None, None]
                )
            for j, i in enumerate(idx):
                r = x[j].mT if flags[j] else x[j]
                shape = updates[i].shape
                out[i] = r.reshape(shape) if len(shape) != 2 else r
        return ctx.owned(out)  # type: ignore[arg-type]
