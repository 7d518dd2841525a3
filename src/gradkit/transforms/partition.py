"""Run one of two transforms per param group, chosen by a boolean group key.

Used by the geometry-aware optimizers: groups with ``use_muon=True`` take the matrix update,
the others AdamW, inside one torch optimizer (one ``state_dict``, schedulers see every group).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from gradkit.core.hyperparams import Hyperparameter, flag
from gradkit.core.transform import (
    Chain,
    GradientTransformation,
    State,
    StepContext,
    TensorList,
    resolve_state_names,
)

__all__ = ["PartitionByFlag"]


class PartitionByFlag(GradientTransformation):
    """``when_true`` for groups whose ``key`` is True, ``when_false`` for the others.

    State of both branches is declared for every parameter, under each branch's own names
    (qualified by ``key`` / ``not_<key>`` only where both branches use a name), as zero-size
    placeholders; the branch a parameter uses allocates its real state on the parameter's first
    step, so no memory is spent on the other branch. ``legacy_aliases``: see
    :meth:`legacy_state_names`.
    """

    flat_ok = False

    def __init__(
        self,
        key: str,
        when_true: GradientTransformation,
        when_false: GradientTransformation,
        default: bool = True,
        *,
        legacy_aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.key = key
        self.legacy_aliases = dict(legacy_aliases or {})
        self.branches = {"T": Chain(when_true), "F": Chain(when_false)}
        self._flag = flag(key, default)
        names = resolve_state_names(
            [
                (key, self.branches["T"].state_names()),
                (f"not_{key}", self.branches["F"].state_names()),
            ]
        )
        self._names = {"T": names[0], "F": names[1]}

    @property
    def complex_ok(self) -> bool:  # type: ignore[override]
        return all(b.complex_ok for b in self.branches.values())

    def check_group(self, group) -> None:  # noqa: ANN001
        self.branches["T" if group.get(self.key, self._flag.default) else "F"].check_group(group)

    def state_names(self) -> tuple[str, ...]:
        return tuple(n for tag in "TF" for n in self._names[tag].values())

    def legacy_state_names(self) -> dict[str, str]:
        """gradkit 0.1's keys (``"T.1.momentum_buffer"``: branch, position, name) -> current
        names; ``legacy_aliases`` maps keys of an older layout of a branch to keys of the
        current one (``{"T.0.momentum_buffer": "T.1.momentum_buffer"}``)."""
        names = {
            f"{tag}.{old}": self._names[tag][new]
            for tag, branch in self.branches.items()
            for old, new in branch.legacy_state_names().items()
        }
        for old, same_as in self.legacy_aliases.items():
            names.setdefault(old, names[same_as])
        return names

    @property
    def needs_closure(self) -> bool:  # type: ignore[override]
        return any(b.needs_closure for b in self.branches.values())

    def specs(self) -> dict[str, Hyperparameter]:
        out = dict(self.branches["F"].specs())
        out.update(self.branches["T"].specs())
        out[self.key] = self._flag
        return out

    def init(self, params: TensorList) -> State:
        state: State = {}
        lazy = [type(p) in (torch.Tensor, torch.nn.Parameter) for p in params]
        meta = [torch.empty(p.shape, dtype=p.dtype, device="meta") for p in params]
        for tag, branch in self.branches.items():
            placeholders = branch.init(meta)
            # tensor subclasses (DTensor under FSDP2) cannot be resized in place: their state
            # is allocated at once, for both branches
            real = branch.init([p for p, z in zip(params, lazy) if not z]) if not all(lazy) else {}
            for k, values in placeholders.items():
                it = iter(real.get(k, []))
                state[self._names[tag][k]] = [
                    torch.empty(0, dtype=v.dtype, device=p.device) if z else next(it)
                    for v, p, z in zip(values, params, lazy)
                ]
        return state

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        tag = "T" if ctx.group[self.key] else "F"
        branch = self.branches[tag]
        sub = {local: state[name] for local, name in self._names[tag].items()}
        fresh = [
            i
            for i, s in enumerate(ctx.steps)
            if s == 1 and type(params[i]) in (torch.Tensor, torch.nn.Parameter)
        ]
        if fresh:  # first step of these parameters: allocate the branch's real state
            real = branch.init([params[i] for i in fresh])
            for k, values in real.items():
                for j, i in enumerate(fresh):
                    sub[k][i].resize_as_(values[j]).copy_(values[j])
        return branch.update(updates, sub, params, ctx)

    def __repr__(self) -> str:
        return f"PartitionByFlag({self.key!r}, {self.branches['T']!r}, {self.branches['F']!r})"
