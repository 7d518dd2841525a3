"""Lion and Lion-kappa: a map ``grad kappa`` of the interpolated momentum (sign for Lion)."""

from __future__ import annotations

import torch

from gradkit.core.hyperparams import betas
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList

__all__ = ["ScaleByLion", "KAPPAS"]

#: the convex functions kappa offered, by the name of their gradient map
KAPPAS = ("sign", "huber", "l2")


class ScaleByLion(GradientTransformation):
    """Lion-kappa's direction ``grad_kappa(b1 m + (1-b1) g)``, then ``m <- b2 m + (1-b2) g``.

    ``kappa`` (fixed at construction):

    - ``"sign"``: kappa = l1 norm, ``grad_kappa = sign`` (Lion);
    - ``"huber"``: kappa = Huber function, ``grad_kappa = clamp(x, -1, 1)`` (sign for large
      entries, linear for small ones);
    - ``"l2"``: kappa = l2 norm of each tensor, ``grad_kappa = x / ||x||`` (per tensor: on a
      flat buffer the norms are segmented sums, ``segments = "tensors"``).

    Every map has entries in [-1, 1], so with decoupled weight decay lambda and ``lr * lambda
    <= 1`` the iterates stay in (or enter) the box ``||x||_inf <= 1 / lambda``. One state buffer
    (the momentum).

    Chen et al., "Symbolic Discovery of Optimization Algorithms", arXiv 2302.06675 (Lion);
    Chen, Liu, Liang & Liu, "Lion Secretly Solves Constrained Optimization: As Lyapunov
    Predicts", arXiv 2310.05898 (Lion-kappa).
    """

    hyperparameters = (betas("betas", (0.9, 0.99)),)

    def __init__(self, kappa: str = "sign") -> None:
        if kappa not in KAPPAS:
            raise ValueError(f"Invalid kappa: {kappa!r}; kappa must be one of {KAPPAS!r}")
        self.kappa = kappa
        self.segments = "tensors" if kappa == "l2" else None

    def init(self, params: TensorList) -> State:
        return {
            "exp_avg": [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
        }

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        beta1, beta2 = ctx.group["betas"]
        m = state["exp_avg"]
        c = torch._foreach_lerp(m, updates, 1 - beta1)
        torch._foreach_lerp_(m, updates, 1 - beta2)
        if self.kappa == "sign":
            torch._foreach_sign_(c)
        elif self.kappa == "huber":
            torch._foreach_clamp_min_(c, -1.0)
            torch._foreach_clamp_max_(c, 1.0)
        elif ctx.segments is not None:  # one flat buffer: the norms as segmented sums
            x = c[0]
            wide = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
            norms = ctx.segments.tensor_norm(wide).clamp_min_(torch.finfo(x.dtype).tiny)
            x.div_(ctx.segments.expand(norms).to(x.dtype))
        else:
            norms = torch._foreach_norm(c)
            torch._foreach_clamp_min_(norms, torch.finfo(c[0].dtype).tiny)
            torch._foreach_div_(c, norms)
        return ctx.owned(c)

    def __repr__(self) -> str:
        return f"ScaleByLion(kappa={self.kappa!r})"
