"""The optimizers ``gradkit compare`` can run: a thin view of :mod:`gradkit.optim.registry`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gradkit.errors import canonical_name

__all__ = [
    "DEFAULT_OPTIMIZERS",
    "OptimizerSpec",
    "build_optimizer",
    "default_lr",
    "registered_optimizers",
    "resolve_optimizers",
    "scaled_hyperparams",
]

#: The default comparison, filtered to what is registered at run time.
DEFAULT_OPTIMIZERS: tuple[str, ...] = ("adamw", "lion", "muon", "diffgrad", "adamp")


@dataclass(frozen=True)
class OptimizerSpec:
    """What the harness needs to know of an optimizer."""

    name: str
    defaults: dict[str, Any]
    needs_closure: bool
    paper_title: str = ""
    arxiv_id: str | None = None


def registered_optimizers() -> dict[str, OptimizerSpec]:
    """All registered optimizers by canonical name (aliases included)."""
    from gradkit import list_optimizers

    out: dict[str, OptimizerSpec] = {}
    for info in list_optimizers():
        spec = OptimizerSpec(
            name=info.name,
            defaults=dict(info.defaults),
            needs_closure=bool(info.needs_closure),
            paper_title=info.paper_title,
            arxiv_id=info.arxiv_id,
        )
        out[canonical_name(info.name)] = spec
        for alias in getattr(info, "aliases", ()):
            out.setdefault(canonical_name(alias), spec)
    return out


def resolve_optimizers(names: list[str] | None) -> tuple[list[OptimizerSpec], list[str]]:
    """Split ``names`` (default: :data:`DEFAULT_OPTIMIZERS`) into (registered, missing)."""
    known = registered_optimizers()
    wanted = list(DEFAULT_OPTIMIZERS) if not names else names
    found: list[OptimizerSpec] = []
    missing: list[str] = []
    for name in wanted:
        key = canonical_name(name)
        if key in known:
            if known[key] not in found:
                found.append(known[key])
        else:
            missing.append(name)
    return found, missing


def default_lr(spec: OptimizerSpec) -> float:
    """The optimizer's default learning rate (1e-3 if it declares none)."""
    lr = spec.defaults.get("lr", 1e-3)
    return float(lr) if isinstance(lr, (int, float)) and lr > 0 else 1e-3


def scaled_hyperparams(spec: OptimizerSpec, lr: float) -> dict[str, float]:
    """``{"lr": lr}`` plus the optimizer's secondary learning rates (``*_lr`` defaults, e.g.
    Muon's ``adamw_lr``) scaled by the same factor, keeping their ratio to the main lr."""
    scale = lr / default_lr(spec)
    hp = {"lr": lr}
    for key, value in spec.defaults.items():
        if key.endswith("_lr") and isinstance(value, (int, float)) and value > 0:
            hp[key] = float(value) * scale
    return hp


def build_optimizer(
    model: nn.Module, spec: OptimizerSpec, **hyperparams: Any
) -> torch.optim.Optimizer:
    """``gradkit.create_optimizer(model, name, **hyperparams)`` (the model, so role-aware
    optimizers such as Muon can split its parameters)."""
    from gradkit import create_optimizer

    return create_optimizer(model, spec.name, **hyperparams)
