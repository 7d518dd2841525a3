"""Lookahead: every k steps, move the slow weights towards the fast ones and restart from them."""

from __future__ import annotations

import torch

from gradkit.core.hyperparams import interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList
from gradkit.transforms._unitwise import positive_int

__all__ = ["Lookahead"]


class Lookahead(GradientTransformation):
    """Lookahead around the step computed by the transforms before it (put it last).

    With fast weights ``p + u`` after this step, and slow weights ``s`` (initialised to the
    parameters), on every step ``t`` with ``t % k == 0``::

        s <- s + alpha * ((p + u) - s);    p <- s

    returned as the step ``s - p``; on other steps the step ``u`` passes through. One state
    buffer (the slow weights). Hyperparameters ``k`` and ``alpha`` under the names given at
    construction (default ``lookahead_k`` = 5 and ``lookahead_alpha`` = 0.5).

    Zhang, Lucas, Hinton & Ba, "Lookahead Optimizer: k steps forward, 1 step back",
    arXiv 1907.08610; a part of Ranger21, arXiv 2106.13731.
    """

    def __init__(
        self,
        k: int = 5,
        alpha: float = 0.5,
        *,
        k_key: str = "lookahead_k",
        alpha_key: str = "lookahead_alpha",
    ) -> None:
        self.k_key = k_key
        self.alpha_key = alpha_key
        self.hyperparameters = (
            positive_int(k_key, k),
            interval(alpha_key, alpha, 0.0, 1.0),
        )

    def init(self, params: TensorList) -> State:
        return {"slow_params": [p.detach().clone() for p in params]}

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        k = ctx.group[self.k_key]
        merge = [i for i, t in enumerate(ctx.steps) if t % k == 0]
        if not merge:
            return updates
        alpha = ctx.group[self.alpha_key]
        out = ctx.writable(updates)
        slow = [state["slow_params"][i] for i in merge]
        cur = [params[i] for i in merge]
        fast = torch._foreach_add(cur, [out[i] for i in merge])
        torch._foreach_lerp_(slow, fast, alpha)
        for i, s, p in zip(merge, slow, cur):
            out[i].copy_(s).sub_(p)
        return out

    def __repr__(self) -> str:
        return f"Lookahead(k_key={self.k_key!r}, alpha_key={self.alpha_key!r})"
