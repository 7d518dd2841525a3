"""Parameter roles: split a model's parameters into hidden matrices, embeddings, output head,
gains and biases, and conv filters.

Geometry-aware optimizers (Muon and its family) update hidden matrices and conv filters
differently from the rest, and unit-wise transforms (adaptive gradient clipping, norm losses)
need to know what a tensor is. :func:`assign_roles` decides a role for every parameter;
:func:`param_groups_by_role` turns that into torch param groups. Both take overrides.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any

from torch import nn

__all__ = ["ParamRole", "assign_roles", "param_groups_by_role", "params_by_role"]

_HEAD_NAMES = {"head", "lm_head", "classifier", "fc_out", "output", "readout", "output_layer"}
_EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)
_CONV_TYPES = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


class ParamRole(str, Enum):
    """What a parameter is, for optimizers that treat parameters differently."""

    HIDDEN_MATRIX = "hidden_matrix"
    EMBEDDING = "embedding"
    OUTPUT_HEAD = "output_head"
    GAIN_BIAS = "gain_bias"
    CONV_FILTER = "conv_filter"


def _find_head(model: nn.Module, head: str | Iterable[str] | None) -> set[str]:
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if head is not None:
        names = {head} if isinstance(head, str) else set(head)
        known = {name for name, _ in model.named_modules()}
        missing = names - known
        if missing:
            raise ValueError(f"head module(s) {sorted(missing)} not found in the model")
        return names
    named = {name for name, _ in linears if name.rsplit(".", 1)[-1] in _HEAD_NAMES}
    if named:
        return named
    return {linears[-1][0]} if linears else set()


def assign_roles(
    model: nn.Module,
    *,
    head: str | Iterable[str] | None = None,
    overrides: Mapping[str, ParamRole | str] | None = None,
) -> dict[str, ParamRole]:
    """Map every trainable parameter's qualified name to its :class:`ParamRole`.

    Rules: embedding weights -> EMBEDDING; weights of the output head (the Linear named by
    ``head``, else one named like ``head``/``lm_head``/``classifier``, else the last Linear) ->
    OUTPUT_HEAD; tensors with fewer than 2 dims -> GAIN_BIAS; conv weights -> CONV_FILTER; other
    matrices -> HIDDEN_MATRIX (a free matrix whose name contains "embed" -> EMBEDDING). A weight
    shared by an embedding and the head (tied) is an EMBEDDING. ``overrides`` (name -> role) wins.
    """
    head_modules = _find_head(model, head)
    roles: dict[str, ParamRole] = {}
    seen: dict[int, str] = {}
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            name = f"{mod_name}.{p_name}" if mod_name else p_name
            if isinstance(module, _EMBEDDING_TYPES):
                role = ParamRole.EMBEDDING
            elif p.ndim < 2:
                role = ParamRole.GAIN_BIAS
            elif isinstance(module, _CONV_TYPES):
                role = ParamRole.CONV_FILTER
            elif mod_name in head_modules:
                role = ParamRole.OUTPUT_HEAD
            elif p.ndim > 2:
                role = ParamRole.CONV_FILTER
            elif "embed" in name.lower() or "pos_emb" in name.lower():
                role = ParamRole.EMBEDDING
            else:
                role = ParamRole.HIDDEN_MATRIX
            if id(p) in seen:  # tied weight: embedding wins, the first name is kept
                first = seen[id(p)]
                if role is ParamRole.EMBEDDING:
                    roles[first] = role
                continue
            seen[id(p)] = name
            roles[name] = role
    for name, role in (overrides or {}).items():
        if name not in roles:
            raise ValueError(f"override names unknown parameter {name!r}")
        roles[name] = ParamRole(role)
    return roles


def params_by_role(
    model: nn.Module,
    *,
    head: str | Iterable[str] | None = None,
    overrides: Mapping[str, ParamRole | str] | None = None,
) -> dict[ParamRole, list[tuple[str, nn.Parameter]]]:
    """Named parameters grouped by role (every role present as a key, possibly empty)."""
    roles = assign_roles(model, head=head, overrides=overrides)
    params = dict(model.named_parameters())
    out: dict[ParamRole, list[tuple[str, nn.Parameter]]] = {r: [] for r in ParamRole}
    for name, role in roles.items():
        out[role].append((name, params[name]))
    return out


def param_groups_by_role(
    model: nn.Module,
    *,
    head: str | Iterable[str] | None = None,
    overrides: Mapping[str, ParamRole | str] | None = None,
    settings: Mapping[ParamRole | str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Torch param groups, one per non-empty role, each with keys ``params``, ``role``,
    ``names`` and the hyperparameters in ``settings[role]`` (e.g. ``{"gain_bias":
    {"weight_decay": 0.0}}``)."""
    settings = {ParamRole(k): dict(v) for k, v in (settings or {}).items()}
    groups = []
    for role, named in params_by_role(model, head=head, overrides=overrides).items():
        if named:
            groups.append(
                {
                    "params": [p for _, p in named],
                    "names": [n for n, _ in named],
                    "role": role.value,
                    **settings.get(role, {}),
                }
            )
    return groups
