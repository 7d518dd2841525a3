"""The optimizers ``gradkit compare`` can run: a thin view of :mod:`gradkit.optim.registry`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gradkit.errors import canonical_name

__all__ = [
    "DEFAULT_OPTIMIZERS",
    "SEARCH_CENTRES",
    "OptimizerSpec",
    "build_optimizer",
    "default_lr",
    "registered_optimizers",
    "resolve_optimizers",
    "scaled_hyperparams",
    "search_centre",
]

#: The default comparison, filtered to what is registered at run time.
DEFAULT_OPTIMIZERS: tuple[str, ...] = ("adamw", "lion", "muon", "diffgrad", "adamp")

#: The learning rate at the centre (log scale) of each optimizer's well-tuned range for small
#: networks trained for about a thousand steps; a study searches ``--lr-range LOW HIGH`` times
#: it. Not the optimizers' own defaults: those are paper settings for other budgets (AdamW's
#: 1e-3 sits at the bottom of its useful range here, while Muon's 0.02 is already in the middle
#: of its own, so one factor range around both defaults put half of Muon's grid at chance).
#: AdamW-type updates train these models well from about 1e-3 to 5e-2, Lion (sign updates)
#: 10x lower (its paper: 3-10x below AdamW's), Muon (orthogonalised updates, spectral scale)
#: from about 5e-3 to 0.1. Optimizers not listed are centred on their default lr.
#:
#: Second-order and preconditioned optimizers (measured with ``gradkit compare``'s training loop
#: on the MNIST-1D CNN, 300 steps, lr from 3e-4 to 0.1, and the char-LM, 200 steps, lr from
#: 1e-3 to 3e-2; seed 0; see docs/second_order.md, "In gradkit compare"):
#:
#: - SOAP, Shampoo, TrAct: AdamW's centre. SOAP is Adam in Shampoo's eigenbasis, Shampoo grafts
#:   Adam's layerwise step size and TrAct's base is AdamW, so their steps have Adam's scale.
#:   Measured best: SOAP 3e-2 on both tasks, as AdamW; Shampoo 1e-2 to 3e-2 (CNN) and 1e-2
#:   (char-LM); TrAct 3e-2 (CNN). Their own defaults (3e-3, 1e-3, 1e-3, as in heavyball and
#:   pytorch-optimizer) are language-model settings for long runs.
#: - PSGD Kron: 3x below SOAP and AdamW, the ratio of heavyball's and pytorch-optimizer's
#:   defaults (PSGD Kron 1e-3, SOAP 3e-3). Measured best 1e-2 on both tasks, and it diverged at
#:   3e-2 on both, where AdamW and SOAP were at their best.
#: - K-FAC: 2e-2 (Muon's). Its heavy-ball momentum on the preconditioned direction, and its SGD
#:   fallback for the layers it does not factor (the CNN's Conv1d, embeddings, norms), want a
#:   larger lr than its default 1e-3 (chosen for 150 steps on the digits CNN): measured best 3e-2
#:   on both tasks, 0.1 lost accuracy on the CNN.
#: - M-FAC: its default 1e-2 (measured best 3e-2 on the CNN, 0.1 at chance).
#: - Gradient-regularized Newton and saddle-free Newton: the paper's step ``lr = 1`` is for a
#:   convex problem with ``L`` fitted to it. With compare's fixed defaults (``L = 1``, damping
#:   1e-2) on minibatches of a non-convex network, ``lr = 1`` blew the loss up (gradient-
#:   regularized, tiny MLP and CNN) or ended at chance (saddle-free, CNN); 1e-2 to 3e-2
#:   (gradient-regularized) and 0.1 to 0.3 (saddle-free) trained. A fair test of these two needs
#:   ``L`` / ``damping`` searched too, which ``--search`` does not offer.
SEARCH_CENTRES: dict[str, float] = {
    "adamw": 8e-3,
    "adam": 8e-3,
    "adamp": 8e-3,
    "diffgrad": 8e-3,
    "lion": 8e-4,
    "muon": 2e-2,
    "soap": 8e-3,
    "shampoo": 8e-3,
    "tract": 8e-3,
    "psgd_kron": 3e-3,
    "kfac": 2e-2,
    "mfac": 1e-2,
    "grad_reg_newton": 3e-2,
    "saddle_free_newton": 0.3,
}


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


def search_centre(spec: OptimizerSpec) -> float:
    """The centre of the optimizer's learning-rate search: :data:`SEARCH_CENTRES` (by canonical
    name), else its default lr."""
    return SEARCH_CENTRES.get(canonical_name(spec.name), default_lr(spec))


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
