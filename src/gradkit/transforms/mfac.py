"""M-FAC: matrix-free inverse empirical-Fisher products over a sliding window of gradients.

With the last ``m`` gradients as the rows of ``W`` (``m x d``; slots not yet filled are zero)
the empirical Fisher and its damped inverse product are

    F = damping I + (1/m) W^T W
    F^-1 v = (1/damping) (v - W^T c),   (m damping I + W W^T) c = W v

(the Woodbury identity: one ``m x m`` solve instead of a ``d x d`` one). :class:`ScaleByMFAC`
keeps ``W`` as a ring buffer and its Gram matrix ``W W^T``: at step ``t`` the gradient ``g``
replaces row ``j = (t - 1) mod m`` and row and column ``j`` of the Gram matrix become ``W g``
(``O(m d)`` per step), then the output is ``F^-1 g`` (the window includes the current gradient,
as in the paper's algorithm). The ``m x m`` system is solved directly (``O(m^3)``, small next to
``O(m d)`` for ``m`` up to about ``sqrt(d)``).

This is the same product as the paper's dynamic algorithm (which keeps the coefficients of a
recursive rank-one form to reach ``O(m^2)`` for the small system); the products agree to
rounding, which the tests check against the dense ``d x d`` solve.

``blocks`` (construction option): ``"group"`` (the default: all parameters of a param group form
one vector ``d``, the paper's global M-FAC; every parameter of the group must then take a step
on every step) or ``"tensor"`` (each tensor is its own block, the blockwise variant). ``damping``
is a group hyperparameter, read every step (the Gram matrix does not depend on it). The window
size ``m`` (``num_gradients``) is a construction option: it fixes the state's shape.

Buffers are float64 for float64 parameters and float32 otherwise. Complex parameters take the
empirical Fisher of their real view.

Frantar, Kurtic & Alistarh, "M-FAC: Efficient Matrix-Free Approximations of Second-Order
Information", NeurIPS 2021, arXiv 2107.03356.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gradkit.core.hyperparams import interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList
from gradkit.transforms.preconditioning import factor_dtype

__all__ = ["MFAC_BLOCKS", "ScaleByMFAC", "mfac_inverse_product"]

MFAC_BLOCKS = ("group", "tensor")


def mfac_inverse_product(window: Tensor, gram: Tensor, v: Tensor, damping: float) -> Tensor:
    """``(damping I + (1/m) W^T W)^-1 v`` by Woodbury, with ``W = window`` (``m x d``) and
    ``gram = W W^T``."""
    m = window.shape[0]
    system = gram + (m * damping) * torch.eye(m, dtype=gram.dtype, device=gram.device)
    c = torch.linalg.solve(system, window @ v)
    return (v - window.mT @ c) / damping


class ScaleByMFAC(GradientTransformation):
    """The M-FAC direction ``F^-1 g`` (see :mod:`gradkit.transforms.mfac`).

    State: ``mfac_window`` (``m x numel``: the last ``m`` gradients) and ``mfac_gram``
    (``m x m``: this tensor's part ``W_p W_p^T`` of the Gram matrix; in ``"group"`` mode the
    group's Gram matrix is their sum).
    """

    flat_ok = False
    hyperparameters = (interval("damping", 1e-3, 0.0, low_open=True),)

    def __init__(self, num_gradients: int = 32, blocks: str = "group") -> None:
        if (
            isinstance(num_gradients, bool)
            or not isinstance(num_gradients, int)
            or num_gradients < 1
        ):
            raise ValueError(
                f"Invalid num_gradients: {num_gradients!r}; num_gradients must be an integer >= 1"
            )
        if blocks not in MFAC_BLOCKS:
            raise ValueError(f"Invalid blocks: {blocks!r}; blocks must be one of {MFAC_BLOCKS}")
        self.m = num_gradients
        self.blocks = blocks

    def init(self, params: TensorList) -> State:
        m = self.m
        window, gram = [], []
        for p in params:
            dt = factor_dtype(p.dtype)
            window.append(torch.zeros(m, p.numel(), dtype=dt, device=p.device))
            gram.append(torch.zeros(m, m, dtype=dt, device=p.device))
        return {"mfac_window": window, "mfac_gram": gram}

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        damping = float(ctx.group["damping"])
        windows, grams = state["mfac_window"], state["mfac_gram"]
        flat = []
        for i, u in enumerate(updates):
            w, gram = windows[i], grams[i]
            g = u.reshape(-1).to(w.dtype)
            j = (ctx.steps[i] - 1) % self.m
            w[j].copy_(g)
            row = w @ g
            gram[j].copy_(row)
            gram[:, j].copy_(row)
            flat.append(g)
        if self.blocks == "tensor":
            out = [
                mfac_inverse_product(windows[i], grams[i], flat[i], damping)
                for i in range(len(updates))
            ]
        else:
            if any(t != ctx.steps[0] for t in ctx.steps):
                raise ValueError(
                    "M-FAC with blocks='group' needs every parameter of a param group to take a "
                    "step on every step (some have no gradient on some steps): use "
                    "blocks='tensor' or put those parameters in their own group"
                )
            gram = torch.stack(list(grams)).sum(0) if len(grams) > 1 else grams[0]
            m = self.m
            system = gram + (m * damping) * torch.eye(m, dtype=gram.dtype, device=gram.device)
            rhs = torch.stack([w @ g for w, g in zip(windows, flat)]).sum(0)
            c = torch.linalg.solve(system, rhs)
            out = [(g - w.mT @ c) / damping for w, g in zip(windows, flat)]
        return ctx.owned([o.reshape(u.shape).to(u.dtype) for o, u in zip(out, updates)])

    def __repr__(self) -> str:
        return f"ScaleByMFAC(num_gradients={self.m}, blocks={self.blocks!r})"
