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

Settings come in two kinds (:mod:`gradkit.core.hyperparams`). Group hyperparameters (``lr``,
``momentum``, ``nesterov``, ``ns_steps``, ``scale``, ``weight_decay``) are read from each group
every step. Construction options are fixed for the optimizer: ``adamw_lr``, ``adamw_betas``,
``adamw_eps``, ``adamw_wd`` (the values the AdamW groups take when the parameters are split;
afterwards those groups' ``lr``, ``betas``, ... are live like any other), ``ns_dtype``,
``orthogonalize_on`` and the ``fused`` and ``nonfinite`` options of every optimizer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from gradkit.core.hyperparams import Hyperparameter, betas, choice, interval
from gradkit.core.transform import GradientTransformation, chain
from gradkit.optim._base import RecipeOptimizer
from gradkit.optim.registry import register_optimizer
from gradkit.roles import ParamRole, param_groups_by_role
from gradkit.transforms.decay import DecoupledWeightDecay
from gradkit.transforms.moments import ScaleByAdam
from gradkit.transforms.muon_update import MuonUpdate, OrthogonalizeLocally
from gradkit.transforms.partition import PartitionByFlag
from gradkit.transforms.scaling import ScaleByLearningRate

__all__ = ["GeometryAwareOptimizer", "Muon", "MATRIX_ROLES", "NS_DTYPE", "ORTHOGONALIZE_ON"]

#: roles that take the geometry-aware (matrix) update in ``from_module``
MATRIX_ROLES = (ParamRole.HIDDEN_MATRIX, ParamRole.CONV_FILTER)

#: construction options: the AdamW groups' values at split time
ADAMW_OPTIONS: tuple[Hyperparameter, ...] = (
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
#: construction option: the Newton-Schulz iteration's dtype (None: bfloat16 on CUDA, else float32)
NS_DTYPE = choice(
    "ns_dtype", None, (None, torch.float32, torch.float64, torch.bfloat16, torch.float16)
)
#: construction option: where the orthogonalization runs. ``"local"``: every matrix on this
#: process; ``"ranks"``: each matrix on one rank of the process group, results exchanged (DDP and
#: FSDP2, see :mod:`gradkit.distributed`; plain local work when no process group is initialized)
ORTHOGONALIZE_ON = choice("orthogonalize_on", "local", ("local", "ranks"))


def compile_switch(fused: Any, name: str) -> bool | None:
    """The matrix step's compile switch from the ``fused`` option (same math either way):
    None (default: compiled on CUDA), True or ``"compile"`` (compiled everywhere), False."""
    if fused == "flat":
        raise ValueError(
            f"Invalid fused: 'flat'; {name}'s matrix update has no flat-buffer form: use "
            "fused=None (compiled on CUDA), True / 'compile' (compiled everywhere) or False"
        )
    return None if fused is None else fused in (True, "compile")


class GeometryAwareOptimizer(RecipeOptimizer):
    """A matrix update (``matrix_recipe``) for ``use_muon`` groups and AdamW for the others.

    Subclasses declare ``hyperparameters`` (their matrix update's defaults), ``options``
    (starting with :data:`ADAMW_OPTIONS`) and ``matrix_recipe(*, fused, **options)``, which
    receives their own construction options (not the ``adamw_*`` ones) and the compile switch
    from ``fused`` (None, True or False). See the module docstring for how parameters are split.
    """

    options: ClassVar[tuple[Hyperparameter, ...]] = ADAMW_OPTIONS
    recipe_takes_fused: ClassVar[bool] = True
    #: older state layouts of the matrix branch (see ``PartitionByFlag.legacy_aliases``)
    legacy_matrix_aliases: ClassVar[Mapping[str, str]] = {}

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], **kwargs: Any):
        only_adamw = sorted(set(kwargs) & self._adamw_only_names())
        if only_adamw:
            name = only_adamw[0]
            raise TypeError(
                f"{type(self).__name__}: {name} is read by the AdamW groups only; pass "
                f"adamw_{'wd' if name == 'weight_decay' else name}=... (their value at the split) "
                f"or set {name} in those param groups"
            )
        adamw = {}
        for spec in ADAMW_OPTIONS:
            adamw[spec.name] = kwargs.get(spec.name, spec.default)
            spec.validate(adamw[spec.name])
        super().__init__(self._split(params, adamw), **kwargs)

    @classmethod
    def _adamw_only_names(cls) -> set[str]:
        """Group hyperparameters that only the AdamW branch reads (``betas``, ``eps``, ...)."""
        branches = cls._build_for(cls._default_options()).branches
        return set(branches["F"].specs()) - set(branches["T"].specs())

    @classmethod
    def _default_options(cls) -> dict[str, Any]:
        return {name: spec.default for name, spec in cls.option_specs().items()}

    @classmethod
    def group_specs(cls) -> dict[str, Hyperparameter]:
        """Group hyperparameters of the matrix update (and ``use_muon``, ``maximize``); those
        that only the AdamW groups read take their defaults from the ``adamw_*`` options."""
        only_adamw = cls._adamw_only_names()
        return {k: v for k, v in super().group_specs().items() if k not in only_adamw}

    @staticmethod
    def _split(params: Iterable[Any], adamw: Mapping[str, Any]) -> list[dict[str, Any]]:
        items = list(params)
        if not items:
            raise ValueError("optimizer got an empty parameter list")
        raw = [dict(g) for g in items] if isinstance(items[0], dict) else [{"params": items}]
        if not isinstance(items[0], dict) and any(
            isinstance(p, Tensor) and p.ndim >= 2 for p in items
        ):
            import warnings

            warnings.warn(
                "Muon got a plain parameter list: it cannot tell the output head (or an "
                "embedding) from hidden matrices, so every tensor with ndim >= 2, the head "
                "included, takes the matrix update; pass the model instead "
                "(Muon.from_module(model) or gradkit.create_optimizer(model, 'muon')), or "
                "param groups with use_muon set",
                UserWarning,
                stacklevel=4,
            )
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
                    g.setdefault(dst, adamw[src])
        return groups

    @classmethod
    def from_module(
        cls,
        model: nn.Module,
        *,
        head: str | Iterable[str] | None = None,
        overrides: Mapping[str, ParamRole | str] | None = None,
        **kwargs: Any,
    ) -> GeometryAwareOptimizer:
        """Build the optimizer for ``model``: hidden matrices and conv filters take the matrix
        update, embeddings, the output head, gains and biases AdamW (split by
        :func:`gradkit.roles.param_groups_by_role`; ``head`` and ``overrides`` as there)."""
        groups = param_groups_by_role(model, head=head, overrides=overrides)
        for g in groups:
            g["use_muon"] = ParamRole(g["role"]) in MATRIX_ROLES
        return cls(groups, **kwargs)

    def matrix_recipe(self, *, fused: bool | None, **options: Any) -> GradientTransformation:
        raise NotImplementedError

    def recipe(self, *, fused: Any, **options: Any) -> GradientTransformation:
        own = {k: v for k, v in options.items() if k not in _ADAMW_KEYS}
        matrix = self.matrix_recipe(fused=compile_switch(fused, type(self).__name__), **own)
        adamw = chain(ScaleByAdam(), DecoupledWeightDecay(), ScaleByLearningRate())
        return PartitionByFlag("use_muon", matrix, adamw, legacy_aliases=self.legacy_matrix_aliases)

    @property
    def orthogonalizer(self) -> Any:
        """The placement of the orthogonalization (its ``local_count`` counts the matrices this
        process has orthogonalized), or None for a method without :class:`MuonUpdate`."""
        for t in self.transform.transforms:
            for branch in getattr(t, "branches", {}).values():
                for sub in branch.transforms:
                    if isinstance(sub, MuonUpdate):
                        return sub.orthogonalize_on
        return None


@register_optimizer(
    "muon",
    paper="Muon: An optimizer for hidden layers in neural networks (Jordan et al., 2024)",
    arxiv=None,
)
class Muon(GeometryAwareOptimizer):
    """Momentum, then Newton-Schulz orthogonalization of each hidden matrix's update; AdamW for
    the other parameters. Update rule and parameter split: see :mod:`gradkit.optim.muon`.

    Group hyperparameters: ``lr`` (0.02), ``momentum`` (0.95), ``nesterov`` (True), ``ns_steps``
    (5), ``scale`` ("spectral" | "rms" | "none"), ``weight_decay`` (0, decoupled: ``p <- (1 - lr
    wd) p``). Construction options: ``adamw_lr`` (3e-4), ``adamw_betas`` ((0.9, 0.95)),
    ``adamw_eps`` (1e-10), ``adamw_wd`` (0) for the AdamW groups; ``ns_dtype`` (the iteration's
    dtype; None: bfloat16 on CUDA, float32 on CPU; float64 runs the normalization and iteration
    in float64 from the input on); ``orthogonalize_on`` ("local", or "ranks" to share the
    orthogonalizations among the ranks of a process group: see
    :class:`gradkit.distributed.DistributedMuon`); ``fused`` (the same math, compiled: None on
    CUDA only, True / "compile" everywhere, False never) and ``nonfinite``.

    Recipe (matrix groups): ``chain(DecoupledWeightDecay, MuonUpdate)``, MuonUpdate doing
    momentum, look-ahead, orthogonalization and scaling batched by matrix shape. The state of a
    matrix is ``momentum_buffer``; gradkit 0.1 checkpoints (``"0.T.1.momentum_buffer"``, or
    ``"0.T.0.momentum_buffer"`` from ``fused=False``) load.
    """

    hyperparameters = {
        "lr": 0.02,
        "momentum": 0.95,
        "nesterov": True,
        "ns_steps": 5,
        "scale": "spectral",
        "weight_decay": 0.0,
    }
    options = (*ADAMW_OPTIONS, NS_DTYPE, ORTHOGONALIZE_ON)
    # gradkit 0.1's fused=False chain kept the momentum at position 0 (EMAMomentum first)
    legacy_matrix_aliases = {"T.0.momentum_buffer": "T.1.momentum_buffer"}

    def placement(self, orthogonalize_on: str, **options: Any) -> OrthogonalizeLocally:
        """The placement object for ``orthogonalize_on``."""
        if orthogonalize_on == "local":
            return OrthogonalizeLocally()
        from gradkit.distributed.orthogonalize import OrthogonalizeOnRanks

        return OrthogonalizeOnRanks(options.get("process_group"))

    def matrix_recipe(
        self,
        *,
        fused: bool | None,
        ns_dtype: torch.dtype | None,
        orthogonalize_on: str,
        **options: Any,
    ) -> GradientTransformation:
        where = self.placement(orthogonalize_on, **options)
        return chain(
            DecoupledWeightDecay(), MuonUpdate(dtype=ns_dtype, fused=fused, orthogonalize_on=where)
        )
