"""Muon, and the base class of the geometry-aware optimizers that pair a matrix update with AdamW.

Muon (Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024,
https://kellerjordan.github.io/posts/muon/): for every hidden weight matrix

    m <- mu m + (1 - mu) g                      (EMA momentum; m_0 = 0)
    u <- (1 - mu) g + mu m   if nesterov else m
    O <- NS_5(u)                                (quintic Newton-Schulz, ~ U V^T of u)
    p <- (1 - lr wd) p - lr * s(shape) * O

with ``s = max(1, rows/cols)^0.5`` (``scale="spectral"``, the reference and pytorch-optimizer
default), ``s = 0.2 sqrt(max(rows, cols))`` (``scale="rms"``, Moonlight, arXiv 2502.16982: update
RMS ~0.2 like AdamW's, so AdamW learning rates carry over) or ``s = 1`` (``scale="none"``).
Conv filters are updated as ``(out, in*k*k)`` matrices. Everything else (embeddings, the output
head, gains and biases) takes AdamW with the ``adamw_*`` hyperparameters.

Which parameter takes which update:
- ``Muon.from_module(model)`` (and ``gradkit.create_optimizer(model, "muon")``) uses
  :func:`gradkit.roles.assign_roles`: HIDDEN_MATRIX and CONV_FILTER -> Muon, EMBEDDING,
  OUTPUT_HEAD and GAIN_BIAS -> AdamW. ``head=`` and ``overrides=`` change the split.
- ``Muon(params)`` with plain tensors: tensors with ``ndim >= 2`` -> Muon, the rest -> AdamW (no
  way to tell the embedding or the head apart: pass groups, or use ``from_module``).
- ``Muon(groups)``: a group with ``use_muon`` set keeps it; one without is split by ``ndim``.
  AdamW groups read ``lr``, ``betas``, ``eps`` and ``weight_decay`` from the group, defaulting to
  ``adamw_lr``, ``adamw_betas``, ``adamw_eps`` and ``adamw_wd``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from gradkit.core.hyperparams import betas, interval
from gradkit.core.transform import GradientTransformation, chain
from gradkit.optim._base import RecipeOptimizer
from gradkit.optim.registry import register_optimizer
from gradkit.roles import ParamRole, param_groups_by_role
from gradkit.transforms.decay import DecoupledWeightDecay
from gradkit.transforms.ema_momentum import EMAMomentum
from gradkit.transforms.moments import ScaleByAdam
from gradkit.transforms.muon_update import MuonUpdate
from gradkit.transforms.orthogonalize import Orthogonalize
from gradkit.transforms.partition import PartitionByFlag
from gradkit.transforms.scaling import ScaleByLearningRate

__all__ = ["GeometryAwareOptimizer", "Muon", "MATRIX_ROLES"]

#: roles that take the geometry-aware (matrix) update in ``from_module``
MATRIX_ROLES = (ParamRole.HIDDEN_MATRIX, ParamRole.CONV_FILTER)

_ADAMW_DEFAULTS: dict[str, Any] = {
    "adamw_lr": 3e-4,
    "adamw_betas": (0.9, 0.95),
    "adamw_eps": 1e-10,
    "adamw_wd": 0.0,
}
_ADAMW_SPECS = (
    interval("adamw_lr", 3e-4, 0.0),
    betas("adamw_betas", (0.9, 0.95)),
    interval("adamw_eps", 1e-10, 0.0, low_open=True),
    interval("adamw_wd", 0.0, 0.0),
)
_ADAMW_KEYS = {
    "adamw_lr": "lr",
    "adamw_betas": "betas",
    "adamw_eps": "eps",
    "adamw_wd": "weight_decay",
}


class GeometryAwareOptimizer(RecipeOptimizer):
    """A matrix update (``matrix_recipe``) for ``use_muon`` groups and AdamW for the others.

    Subclasses set ``matrix_defaults`` (their own hyperparameters with the paper's defaults) and
    ``matrix_recipe``. See the module docstring for how parameters are split.
    """

    matrix_defaults: ClassVar[dict[str, Any]] = {}
    default_hyperparameters: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.default_hyperparameters = {**cls.matrix_defaults, **_ADAMW_DEFAULTS}

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], **hyperparams: Any):
        hp = {**self.default_hyperparameters, **hyperparams}
        for spec in _ADAMW_SPECS:
            spec.validate(hp[spec.name])
        groups = self._split(params, hp)
        super().__init__(groups, **hyperparams)

    @staticmethod
    def _split(params: Iterable[Any], hp: Mapping[str, Any]) -> list[dict[str, Any]]:
        items = list(params)
        if not items:
            raise ValueError("optimizer got an empty parameter list")
        raw = [dict(g) for g in items] if isinstance(items[0], dict) else [{"params": items}]
        groups: list[dict[str, Any]] = []
        for g in raw:
            ps = g["params"]
            ps = [ps] if isinstance(ps, Tensor) else list(ps)
            if "use_muon" in g:
                groups.append({**g, "params": ps})
                continue
            mats = [p for p in ps if p.ndim >= 2]
            rest = [p for p in ps if p.ndim < 2]
            if mats:
                groups.append({**g, "params": mats, "use_muon": True})
            if rest:
                groups.append({**g, "params": rest, "use_muon": False})
        for g in groups:
            if not g["use_muon"]:
                for src, dst in _ADAMW_KEYS.items():
                    g.setdefault(dst, hp[src])
        return groups

    @classmethod
    def from_module(
        cls,
        model: nn.Module,
        *,
        head: str | Iterable[str] | None = None,
        overrides: Mapping[str, ParamRole | str] | None = None,
        **hyperparams: Any,
    ) -> GeometryAwareOptimizer:
        """Build the optimizer for ``model``: hidden matrices and conv filters take the matrix
        update, embeddings, the output head, gains and biases AdamW (split by
        :func:`gradkit.roles.param_groups_by_role`; ``head`` and ``overrides`` as there)."""
        groups = param_groups_by_role(model, head=head, overrides=overrides)
        for g in groups:
            g["use_muon"] = ParamRole(g["role"]) in MATRIX_ROLES
        return cls(groups, **hyperparams)

    def matrix_recipe(self, **hp: Any) -> GradientTransformation:
        raise NotImplementedError

    def recipe(self, **hp: Any) -> GradientTransformation:
        adamw = chain(ScaleByAdam(), DecoupledWeightDecay(), ScaleByLearningRate())
        return PartitionByFlag("use_muon", self.matrix_recipe(**hp), adamw)


@register_optimizer(
    "muon",
    paper="Muon: An optimizer for hidden layers in neural networks (Jordan et al., 2024)",
    arxiv=None,
)
class Muon(GeometryAwareOptimizer):
    """Momentum, then Newton-Schulz orthogonalization of each hidden matrix's update; AdamW for
    the other parameters. Update rule and parameter split: see :mod:`gradkit.optim.muon`.

    Hyperparameters: ``lr`` (0.02), ``momentum`` (0.95), ``nesterov`` (True), ``ns_steps`` (5),
    ``scale`` ("spectral" | "rms" | "none"), ``weight_decay`` (0, decoupled: ``p <- (1 - lr wd)
    p``), and ``adamw_lr`` (3e-4), ``adamw_betas`` ((0.9, 0.95)), ``adamw_eps`` (1e-10),
    ``adamw_wd`` (0) for the AdamW groups. ``ns_dtype`` chooses the iteration's dtype (None:
    bfloat16 on CUDA, float32 on CPU).

    Recipe (matrix groups): ``chain(EMAMomentum, Orthogonalize, DecoupledWeightDecay,
    ScaleByLearningRate)`` with ``fused=False``; the default ``fused=True`` runs the same rule as
    ``chain(DecoupledWeightDecay, MuonUpdate)`` (momentum, look-ahead, stacking and normalization
    in one compiled function per shape on CUDA; the two forms' state dicts use different keys).
    """

    matrix_defaults = {
        "lr": 0.02,
        "momentum": 0.95,
        "nesterov": True,
        "ns_steps": 5,
        "scale": "spectral",
        "weight_decay": 0.0,
        "ns_dtype": None,
        "fused": True,
    }

    def matrix_recipe(self, **hp: Any) -> GradientTransformation:
        dtype = hp.get("ns_dtype")
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise ValueError(f"Invalid ns_dtype: {dtype!r}; ns_dtype must be a torch.dtype or None")
        if not isinstance(hp.get("fused", True), bool):
            raise ValueError(f"Invalid fused: {hp['fused']!r}; fused must be True or False")
        if hp.get("fused", True):
            return chain(DecoupledWeightDecay(), MuonUpdate(dtype=dtype))
        return chain(
            EMAMomentum(), Orthogonalize(dtype=dtype), DecoupledWeightDecay(), ScaleByLearningRate()
        )
