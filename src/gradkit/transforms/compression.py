"""Compressed updates with error feedback: top-k and scaled-sign compressors.

Put at the head of a chain, the rest of the optimizer runs on the compressed updates. Each
parameter keeps a residual ``e`` (state ``"residual"``, zeros at first) of what compression has
not yet applied. With raw update ``g_t``, compressor ``C`` and feedback strength ``eta``::

    p_t     = g_t + eta * e_t            # what is compressed
    c_t     = C(p_t)                     # what is passed on (the compressed update)
    e_{t+1} = e_t + g_t - c_t            # nothing is lost, only delayed

so ``sum_{t<=T} c_t + e_{T+1} = sum_{t<=T} g_t`` after any number of steps (the error-feedback
invariant). ``eta = 1`` is classic error feedback (``e_{t+1} = p_t - c_t``).

Compressors (per tensor):

- ``"top_k"``: keeps the ``k = max(1, ceil(topk_ratio * numel))`` entries of largest magnitude,
  zeros elsewhere. "Sparsified SGD with Memory", Sebastian U. Stich, Jean-Baptiste Cordonnier,
  Martin Jaggi, 2018, arXiv 1809.07599.
- ``"sign"``: ``(||p||_1 / numel) * sign(p)``, the scaled sign of "Error Feedback Fixes SignSGD
  and other Gradient Compression Schemes", Sai Praneeth Karimireddy, Quentin Rebjock, Sebastian
  U. Stich, Martin Jaggi, 2019, arXiv 1901.09847.

``eta < 1`` is *inspired by* "EControl: Fast Distributed Optimization with Compression and Error
Control" (Yuan Gao, Rustem Islamov, Sebastian U. Stich, 2023, arXiv 2311.05645) and
**reconstructed from its abstract only** ("regulate error compensation by controlling the
strength of the feedback signal"): the residual keeps the full error and only a fraction ``eta``
of it is fed into what is compressed. It is not EControl's full method: a summary of the paper
says EControl also keeps a gradient estimator built from the same compressed message (for
heterogeneous workers), which is not implemented here, and its choice of ``eta`` was not read.

Memory: one residual tensor per parameter (the parameter's size and dtype).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gradkit.core.hyperparams import interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList
from gradkit.errors import invalid_value

__all__ = ["COMPRESSORS", "CompressWithErrorFeedback", "compress"]

COMPRESSORS = ("top_k", "sign")


def compress(x: Tensor, compressor: str, topk_ratio: float = 0.01) -> Tensor:
    """``C(x)`` for one tensor: top-k by magnitude (``ceil(topk_ratio * numel)`` entries, at
    least one) or the scaled sign ``(||x||_1 / numel) sign(x)``. A new tensor."""
    if compressor not in COMPRESSORS:
        raise invalid_value("compressor", compressor, f"one of {COMPRESSORS}")
    n = x.numel()
    if n == 0:
        return x.clone()
    if compressor == "sign":
        return torch.sign(x) * (x.abs().sum() / n)
    k = min(n, max(1, math.ceil(topk_ratio * n)))
    flat = x.reshape(-1)
    idx = flat.abs().topk(k, sorted=False).indices
    out = torch.zeros_like(flat)
    out[idx] = flat[idx]
    return out.view_as(x)


class CompressWithErrorFeedback(GradientTransformation):
    """Compress each update tensor with error feedback (see the module docstring)::

        p = u + feedback_strength * e;   c = C(p);   e <- e + u - c;   return c

    Args:
        compressor: ``"top_k"`` (default) or ``"sign"``; a construction option.

    Hyperparameters: ``topk_ratio`` in ``(0, 1]`` (fraction of entries kept by top-k; default
    0.01), ``feedback_strength`` in ``(0, 1]`` (``eta``; 1 = classic error feedback). State:
    ``"residual"``, one tensor per parameter. Top-k is per tensor, so ``flat_ok`` is False.
    """

    flat_ok = False

    hyperparameters = (
        interval("topk_ratio", 0.01, 0.0, 1.0, low_open=True),
        interval("feedback_strength", 1.0, 0.0, 1.0, low_open=True),
    )

    def __init__(self, compressor: str = "top_k") -> None:
        if compressor not in COMPRESSORS:
            raise invalid_value("compressor", compressor, f"one of {COMPRESSORS}")
        self.compressor = compressor

    def init(self, params: TensorList) -> State:
        return {
            "residual": [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
        }

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        eta = ctx.group["feedback_strength"]
        ratio = ctx.group["topk_ratio"]
        out = []
        for u, e in zip(updates, state["residual"]):
            if u.numel() == 0:
                out.append(u)
                continue
            u = u.to(e.dtype) if u.dtype != e.dtype else u
            p = u + e if eta == 1 else u + eta * e
            c = compress(p, self.compressor, ratio)
            if eta == 1:
                e.copy_(p - c)  # e + u - c, computed from p (exact zeros where top-k keeps)
            else:
                e.add_(u).sub_(c)
            out.append(c)
        return ctx.owned(out)

    def __repr__(self) -> str:
        return f"CompressWithErrorFeedback(compressor={self.compressor!r})"
