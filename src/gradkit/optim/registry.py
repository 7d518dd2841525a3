"""The optimizer registry: ``create_optimizer`` and ``list_optimizers``.

Every module in :mod:`gradkit.optim` registers its optimizers with :func:`register_optimizer`;
the registry imports all of them the first time it is asked, so a new optimizer file needs no
edit anywhere else.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradkit.errors import UnknownNameError, canonical_name

__all__ = ["OptimizerInfo", "register_optimizer", "create_optimizer", "list_optimizers", "get_info"]


@dataclass(frozen=True)
class OptimizerInfo:
    """What the registry knows of a named optimizer."""

    name: str
    cls: type[torch.optim.Optimizer] = field(repr=False)
    paper_title: str
    arxiv_id: str | None
    aliases: tuple[str, ...] = ()

    @property
    def defaults(self) -> dict[str, Any]:
        """Every keyword argument of the optimizer with its default (group hyperparameters
        and construction options, from the class's declaration)."""
        return dict(self.cls.declared_defaults())

    @property
    def needs_closure(self) -> bool:
        """True if ``step`` must be given a closure."""
        return bool(getattr(self.cls, "requires_closure", False))

    @property
    def takes_module(self) -> bool:
        """True if the optimizer splits a model's parameters by role (``from_module``)."""
        return hasattr(self.cls, "from_module")


_REGISTRY: dict[str, OptimizerInfo] = {}
_ALIASES: dict[str, str] = {}
_LOADED = False


def register_optimizer(
    name: str,
    *,
    paper: str,
    arxiv: str | None = None,
    aliases: Iterable[str] = (),
):
    """Class decorator that adds an optimizer to the registry under ``name`` (and ``aliases``)."""

    def decorate(cls: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
        key = canonical_name(name)
        if key in _REGISTRY and _REGISTRY[key].cls is not cls:
            raise ValueError(f"optimizer name {name!r} is registered twice")
        info = OptimizerInfo(key, cls, paper, arxiv, tuple(canonical_name(a) for a in aliases))
        _REGISTRY[key] = info
        for alias in info.aliases:
            _ALIASES[alias] = key
        return cls

    return decorate


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    import gradkit.optim as package

    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{module.name}")
    _LOADED = True


def get_info(name: str) -> OptimizerInfo:
    """Registry entry for ``name`` (case, '-', '_' and spaces alike: :func:`canonical_name`).

    Raises:
        UnknownNameError: (a ValueError) for an unknown name; the message lists the known ones.
    """
    _load_all()
    key = canonical_name(name)
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise UnknownNameError("optimizer", name, _REGISTRY)
    return _REGISTRY[key]


def list_optimizers() -> list[OptimizerInfo]:
    """All registered optimizers, sorted by name."""
    _load_all()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def create_optimizer(
    model_or_params: nn.Module | Iterable[Any], name: str, **hyperparams: Any
) -> torch.optim.Optimizer:
    """Create the optimizer registered as ``name``.

    Args:
        model_or_params: an ``nn.Module`` or what a torch optimizer takes (params or groups).
            Optimizers that treat parameters by role (Muon and its family) need the module.
        name: a registered name, e.g. ``"adamw"``; see :func:`list_optimizers`.
        **hyperparams: passed to the optimizer's constructor.

    >>> import torch, gradkit
    >>> model = torch.nn.Linear(4, 2)
    >>> opt = gradkit.create_optimizer(model, "Lion-Kappa", lr=1e-4, kappa="huber")
    >>> type(opt).__name__, opt.options["kappa"], opt.param_groups[0]["lr"]
    ('LionKappa', 'huber', 0.0001)
    >>> gradkit.create_optimizer(model, "adamz")
    Traceback (most recent call last):
    ...
    gradkit.errors.UnknownNameError: unknown optimizer 'adamz'; known optimizers: adago, ...
    """
    info = get_info(name)
    if isinstance(model_or_params, nn.Module):
        if info.takes_module:
            return info.cls.from_module(model_or_params, **hyperparams)
        return info.cls(model_or_params.parameters(), **hyperparams)
    return info.cls(model_or_params, **hyperparams)
