"""Effective learning rate of scale-invariant (normalized) weights.

van Laarhoven, "L2 Regularization versus Batch and Weight Normalization", arXiv:1706.05350.
A weight ``w`` followed by batch/layer/weight normalization is scale-invariant:
``L(c w) = L(w)`` for ``c > 0``, hence ``grad L(c w) = grad L(w) / c``. Only the direction
``w / ||w||`` matters, and an SGD step of size ``lr`` moves it like a step of size::

    lr_eff = lr / ||w||^2                (SGD, with or without momentum)

on the unit sphere: training ``c w`` with ``lr c^2`` follows exactly the same functions as
training ``w`` with ``lr``. Adam normalises the gradient scale away, so a step moves ``w`` by
about ``lr`` whatever ``||w||``, and the direction moves with::

    lr_eff = lr / ||w||                  (Adam, AdamW, RMSprop, ... : "adam")

This is why weight decay on normalized layers acts as a learning-rate schedule: it shrinks
``||w||`` and so raises ``lr_eff``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from gradkit._optional import import_optional

if TYPE_CHECKING:
    from matplotlib.figure import Figure
from torch import Tensor, nn

from gradkit.curvature._utils import check_nonnegative, is_real
from gradkit.errors import UnknownNameError, invalid_value

_KINDS = ("sgd", "adam")
_ADAPTIVE = ("Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad", "Adadelta")


def effective_lr(lr: float, weight: Tensor, kind: str = "sgd") -> float:
    """``lr / ||w||^2`` (``kind="sgd"``) or ``lr / ||w||`` (``kind="adam"``)."""
    _check_kind(kind)
    check_nonnegative("lr", lr)
    norm = float(weight.detach().norm())
    if norm == 0.0:
        raise ValueError("the weight has zero norm: its effective learning rate is infinite")
    return lr / norm**2 if kind == "sgd" else lr / norm


def _check_kind(kind: object) -> None:
    if kind not in _KINDS:
        raise invalid_value("kind", kind, f"one of {_KINDS}")


def optimizer_kind(optimizer: torch.optim.Optimizer) -> str:
    """``"adam"`` for adaptive (gradient-scale-invariant) optimizers, ``"sgd"`` otherwise."""
    name = type(optimizer).__name__
    return "adam" if name in _ADAPTIVE or "adam" in name.lower() else "sgd"


@torch.no_grad()
def find_scale_invariant(
    model: nn.Module,
    inputs: Tensor,
    scale: float = 2.0,
    rtol: float = 1e-4,
) -> list[str]:
    """Names of parameters ``w`` such that replacing ``w`` by ``scale * w`` leaves the outputs
    on ``inputs`` unchanged (relative tolerance ``rtol``).

    The check runs on a copy of the model in training mode (batch statistics), where
    batch-normalized weights are scale-invariant; the model itself is not modified.
    """
    if not (is_real(scale) and math.isfinite(scale) and scale > 0 and scale != 1):
        raise invalid_value("scale", scale, "a finite number > 0 and != 1")
    check_nonnegative("rtol", rtol)
    work = copy.deepcopy(model).train()
    ref = work(inputs)
    if not isinstance(ref, Tensor):
        raise ValueError("the model must return a tensor")
    tol = rtol * float(ref.abs().max().clamp_min(1e-12))
    found = []
    for name, p in work.named_parameters():
        if not p.requires_grad or float(p.norm()) == 0.0:
            continue
        saved = p.clone()
        p.mul_(scale)
        out = work(inputs)
        p.copy_(saved)
        if float((out - ref).abs().max()) <= tol:
            found.append(name)
    return found


def effective_learning_rates(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    names: Sequence[str],
    kind: str | None = None,
) -> dict[str, float]:
    """Effective learning rate of each named (scale-invariant) parameter.

    ``kind`` defaults to :func:`optimizer_kind` of ``optimizer``; each parameter's ``lr`` is
    read from its param group.
    """
    kind = optimizer_kind(optimizer) if kind is None else kind
    _check_kind(kind)
    params = dict(model.named_parameters())
    lr_of = {id(p): float(g["lr"]) for g in optimizer.param_groups for p in g["params"]}
    out = {}
    for n in names:
        if n not in params:
            raise UnknownNameError("parameter", n, params)
        p = params[n]
        if id(p) not in lr_of:
            raise ValueError(f"{n!r} is not optimized by the optimizer")
        out[n] = effective_lr(lr_of[id(p)], p, kind)
    return out


@dataclass
class EffectiveLRTracker:
    """Call after each ``optimizer.step()`` to record the effective learning rates."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    names: Sequence[str]
    kind: str | None = None
    steps: list[int] = field(default_factory=list)
    history: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind is not None:
            _check_kind(self.kind)

    def __call__(self, step: int | None = None) -> dict[str, float]:
        rates = effective_learning_rates(self.model, self.optimizer, self.names, self.kind)
        self.steps.append(len(self.steps) if step is None else int(step))
        for n, v in rates.items():
            self.history.setdefault(n, []).append(v)
        return rates

    def plot(self) -> Figure:
        """Effective learning rate of each tracked parameter against step (log scale)."""
        figure = import_optional("matplotlib.figure", "EffectiveLRTracker.plot")
        fig = figure.Figure(figsize=(5.5, 4.0), layout="constrained")
        ax = fig.add_subplot(1, 1, 1)
        for n, v in self.history.items():
            ax.plot(self.steps, v, label=n)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("effective learning rate")
        if self.history:
            ax.legend(fontsize="small")
        ax.set_title("effective learning rate of normalized weights")
        return fig
