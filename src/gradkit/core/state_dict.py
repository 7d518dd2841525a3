"""Checking and migrating the state dicts that a :class:`~gradkit.core.optimizer.ChainOptimizer`
loads.

State keys name what they hold (``exp_avg``, ``momentum_buffer``: torch.optim's names where the
buffer is the same), so torch.optim checkpoints of the same rule load. Before loading, the saved
state is compared with what the optimizer's chain keeps; anything else is refused with a
ValueError that says what differs, never half-used.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

__all__ = ["check_and_migrate_state_dict", "TORCH_IMPLEMENTATION_KEYS"]

#: keys of torch.optim param groups that choose an implementation, not the rule; dropped at load
TORCH_IMPLEMENTATION_KEYS = frozenset(
    {"foreach", "fused", "capturable", "differentiable", "decoupled_weight_decay"}
)
_POSITIONAL = re.compile(r"^\d+\.")


def _fail(optimizer: Any, what: str) -> ValueError:
    return ValueError(
        f"cannot load this state dict into {type(optimizer).__name__}: {what}. It was saved by "
        "another optimizer or with other construction options."
    )


def _clean_groups(optimizer: Any, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop torch.optim's implementation switches; check recorded construction options."""
    options = optimizer.construction_option_values()
    out = []
    for i, saved in enumerate(groups):
        group = {k: v for k, v in saved.items() if k not in TORCH_IMPLEMENTATION_KEYS}
        for name in sorted(set(group) & set(options)):
            value = group.pop(name)
            if value != options[name]:
                raise _fail(
                    optimizer,
                    f"param group {i} was saved with {name}={value!r}, this optimizer has "
                    f"{name}={options[name]!r}",
                )
        out.append(group)
    return out


def _migrate(optimizer: Any, state: dict[str, Any]) -> dict[str, Any]:
    """Rename gradkit 0.1's positional keys (``"0.exp_avg"``) to the chain's names."""
    legacy = optimizer.transform.legacy_state_names()
    out: dict[str, Any] = {}
    for pid, saved in state.items():
        if not any(_POSITIONAL.match(k) for k in saved):
            out[pid] = saved
            continue
        renamed = {}
        for key, value in saved.items():
            if key == "step" or not _POSITIONAL.match(key):
                renamed[key] = value
            elif key in legacy:
                renamed[legacy[key]] = value
            else:
                raise _fail(optimizer, f"its state has the positional key {key!r}, which this "
                            f"optimizer's chain never had")  # fmt: skip
        out[pid] = renamed
    return out


def _template(optimizer: Any, p: Tensor, cache: dict[tuple, dict[str, Tensor]]) -> dict[str, Any]:
    """Fresh state of ``p`` (its real view if complex) on the meta device: names and shapes."""
    real = torch.view_as_real(p.detach()) if p.is_complex() else p.detach()
    key = (tuple(real.shape), real.dtype)
    if key not in cache:
        meta = torch.empty(real.shape, dtype=real.dtype, device="meta")
        try:
            cache[key] = {k: v[0] for k, v in optimizer.transform.init([meta]).items()}
        except (RuntimeError, NotImplementedError, TypeError):  # an init that needs real data
            cache[key] = {k: None for k in optimizer.transform.state_names()}
    return cache[key]


def _check_state(optimizer: Any, groups: list[dict[str, Any]], state: dict[str, Any]) -> None:
    mine = optimizer.param_groups
    if len(groups) != len(mine):
        raise _fail(optimizer, f"it has {len(groups)} param group(s), this optimizer {len(mine)}")
    if any(len(g["params"]) != len(m["params"]) for g, m in zip(groups, mine)):
        return  # torch's load_state_dict raises its own clear error for this
    cache: dict[tuple, dict[str, Any]] = {}
    for saved, group in zip(groups, mine):
        for pid, p in zip(saved["params"], group["params"]):
            if pid not in state:
                continue
            saved_state = state[pid]
            template = _template(optimizer, p, cache)
            keys = set(saved_state) - {"step"}
            extra = sorted(keys - set(template))
            lazy = {k for k, v in template.items() if v is None or v.numel() == 0}
            missing = sorted(set(template) - keys - lazy)
            if extra or missing:
                parts = []
                if extra:
                    parts.append(
                        f"its state has {extra}, which {type(optimizer).__name__} does not keep"
                    )
                if missing:
                    parts.append(f"it lacks {missing}")
                raise _fail(optimizer, " and ".join(parts))
            real_shape = torch.view_as_real(p).shape if p.is_complex() else p.shape
            for k in sorted(keys):
                value, fresh = saved_state[k], template[k]
                if not isinstance(value, Tensor) or fresh is None or fresh.numel() == 0:
                    continue  # a lazily allocated buffer takes its shape on first use
                allowed = {tuple(fresh.shape), tuple(real_shape), tuple(p.shape)}
                if tuple(value.shape) not in allowed:
                    raise _fail(
                        optimizer,
                        f"state {k!r} of a parameter of shape {tuple(p.shape)} has shape "
                        f"{tuple(value.shape)}, expected {tuple(fresh.shape)}",
                    )


def check_and_migrate_state_dict(optimizer: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``state_dict`` ready for ``torch.optim.Optimizer.load_state_dict``.

    Positional keys are renamed, buffers that an older version of a transform did not keep
    are filled in (``fill_missing_state``), torch.optim's implementation switches dropped,
    recorded construction options compared, and every parameter's state checked against the chain's
    names and shapes; a mismatch raises ValueError.
    """
    if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
        raise ValueError("a state dict has the keys 'state' and 'param_groups'")
    groups = _clean_groups(optimizer, state_dict["param_groups"])
    state = _migrate(optimizer, state_dict["state"])
    fill = getattr(optimizer.transform, "fill_missing_state", None)
    if fill is not None:
        state = {pid: dict(saved) for pid, saved in state.items()}
        for saved in state.values():
            fill(saved)
    _check_state(optimizer, groups, state)
    return {**state_dict, "state": state, "param_groups": groups}
