"""XGrad: take each gradient at the weights the base optimizer predicts for the next steps."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from gradkit.core.hyperparams import interval
from gradkit.optim._wrapper import WrapperOptimizer, closure_error
from gradkit.optim.adam import Adam, AdamW
from gradkit.optim.registry import register_optimizer
from gradkit.optim.sgd import SGD

__all__ = ["XGrad"]


def _kind(base: Optimizer) -> str:
    if isinstance(base, (AdamW, torch.optim.AdamW)):
        return "adamw"
    if isinstance(base, (Adam, torch.optim.Adam)):
        return "adam"
    if isinstance(base, (SGD, torch.optim.SGD)):
        return "sgd"
    raise ValueError(
        f"XGrad predicts weights for SGD with momentum, Adam and AdamW (gradkit or torch.optim); "
        f"got base_optimizer {type(base).__name__}"
    )


def _find(state: dict[str, Any], name: str) -> Tensor | None:
    """State entry ``name`` (torch.optim key) or ``"<i>.name"`` (gradkit chain key)."""
    for key, value in state.items():
        if key == name or key.endswith("." + name):
            return value
    return None


@register_optimizer(
    "xgrad",
    paper="XGrad: Boosting Gradient-Based Optimizers With Weight Prediction",
    arxiv="2305.18240",
)
class XGrad(WrapperOptimizer):
    """Weight prediction: the gradient of each step is taken at the predicted future weights.

    Each step: ``w_hat = w - s * lr * delta`` with ``delta`` the base optimizer's update direction
    from its current state (``s = prediction_steps``), the closure evaluates loss and gradient at
    ``w_hat``, the weights are put back to ``w`` and the base optimizer steps with that gradient::

        SGD with momentum:  delta = b                                   (momentum buffer)
        Adam:               delta = (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
        AdamW:              delta = (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps) + wd * w

    where ``t`` is the number of steps taken so far. On the first step there is no state and
    ``w_hat = w``. One closure call per step (the closure's loss is the loss at ``w_hat``).

    Guan, Li, Shi, Meng, "XGrad: Boosting Gradient-Based Optimizers With Weight Prediction",
    arXiv 2305.18240. Default ``prediction_steps = 1`` (the paper's setting); base
    optimizer SGD with ``momentum = 0.9``.
    """

    wrapper_hyperparameters = (interval("prediction_steps", 1.0, 0.0),)

    def __init__(self, params: Any, base_optimizer: Any = "sgd", **kwargs: Any) -> None:
        if base_optimizer in ("sgd", SGD, torch.optim.SGD):
            kwargs.setdefault("momentum", 0.9)
        super().__init__(params, base_optimizer, **kwargs)
        self._kind = _kind(self.base_optimizer)
        if self._kind == "sgd":
            for group in self.param_groups:
                if group["momentum"] <= 0 or group.get("nesterov", False):
                    raise ValueError(
                        "XGrad over SGD predicts with the heavy-ball momentum buffer: it needs "
                        "momentum in (0, 1) and nesterov=False"
                    )

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Move to the predicted weights, evaluate the closure there, move back, step the base."""
        if closure is None:
            raise closure_error(
                "XGrad", "it evaluates the loss and gradient at the predicted future weights."
            )
        params: list[Tensor] = []
        deltas: list[Tensor] = []
        for group in self.param_groups:
            for p in group["params"]:
                delta = self._delta(group, p)
                if delta is not None:
                    params.append(p)
                    deltas.append(delta)
        saved = [p.clone() for p in params]
        for p, d, group in zip(params, deltas, self._groups_of(params)):
            lr = float(group["lr"])
            p.add_(d, alpha=-group["prediction_steps"] * lr)
        del deltas
        loss = self._evaluate(closure)
        if params:
            torch._foreach_copy_(params, saved)
        self.base_optimizer.step()
        return loss

    def _groups_of(self, params: list[Tensor]) -> list[dict[str, Any]]:
        owner = {id(p): g for g in self.param_groups for p in g["params"]}
        return [owner[id(p)] for p in params]

    def _delta(self, group: dict[str, Any], p: Tensor) -> Tensor | None:
        state = self.state.get(p)
        if not state:
            return None
        if self._kind == "sgd":
            buf = _find(state, "momentum_buffer")
            return None if buf is None or buf.numel() == 0 else buf.clone()
        m, v = _find(state, "exp_avg"), _find(state, "exp_avg_sq")
        step = state.get("step")
        if m is None or v is None or step is None:
            return None
        t = float(step)
        if t < 1:
            return None
        if group.get("amsgrad", False):
            v = _find(state, "max_exp_avg_sq")
        beta1, beta2 = group["betas"]
        denom = v.sqrt().div_(math.sqrt(1 - beta2**t)).add_(group["eps"])
        delta = (m / (1 - beta1**t)).div_(denom)
        if self._kind == "adamw" and group["weight_decay"] != 0:
            delta.add_(p, alpha=group["weight_decay"])
        return delta
