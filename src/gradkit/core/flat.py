"""The flat fast path: one contiguous buffer each for a group's params, grads and states.

When every transform of a chain is ``flat_ok`` (its result on one flat concatenation of the
group's tensors equals the per-tensor result), the optimizer can keep the parameters, gradients
and every state tensor of a param group as *views* into one flat buffer each, and run the chain
on one-element lists ``[flat]``. Rules that reduce per tensor read the tensor boundaries from
``ctx.segments`` (:class:`gradkit.core.segments.Segments`, made here when the chain asks for
it); their per-tensor state (one value per tensor) is one buffer with one element per tensor.
Under ``torch.compile`` (:mod:`gradkit.core.compiled`) the whole chain, plus the final
``p += step``, becomes one generated kernel: one pass over memory, which is the floor for
elementwise optimizer math.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from gradkit.core.segments import Segments
from gradkit.core.transform import Chain, StepContext

__all__ = ["FlatGroup", "flat_update"]


def flat_update(
    transform: Chain,
    param: Tensor,
    grad: Tensor,
    state: dict[str, list[Tensor]],
    group: dict[str, Any],
    step: int,
    optimizer: Any = None,
    closure: Callable[[], Any] | None = None,
    loss: Any = None,
    segments: Segments | None = None,
) -> None:
    """Run ``transform`` eagerly on one flat buffer and add the step to ``param`` in place."""
    ctx = StepContext(
        group=group, steps=[step], grads=[grad], closure=closure, loss=loss, optimizer=optimizer,
        segments=segments,
    )  # fmt: skip
    transform.apply([param], [grad], state, ctx)


class FlatGroup:
    """Flat buffers for the params (with grads) of one param group.

    ``params[i].data`` and ``params[i].grad`` are views into ``param_flat`` and ``grad_flat``;
    ``optimizer.state[params[i]][key]`` is a view into ``state_flat[key]`` once that buffer is
    allocated (zero-size placeholders stay per parameter until the transform allocates them).
    """

    def __init__(self, group: dict[str, Any], params: list[Tensor]) -> None:
        self.group = group
        self.params = params
        self.numels = [p.numel() for p in params]
        self.offsets: list[int] = []
        total = 0
        for n in self.numels:
            self.offsets.append(total)
            total += n
        self.total = total
        self.param_flat: Tensor = torch.empty(0)
        self.grad_flat: Tensor = torch.empty(0)
        self.state_flat: dict[str, Tensor] = {}
        self._viewed: dict[str, tuple[int, int]] = {}
        self.step: int | None = None
        #: True once a step ran on these buffers (the first one runs eagerly, see
        #: ``ChainOptimizer._flat_step``)
        self.stepped = False
        self._param_ptrs: list[int] = []
        self._grad_views: list[Tensor] = []
        #: every parameter's ``state[p]["step"]`` is a 0-d view into this one tensor, so that
        #: counting a step is one op instead of one per parameter
        self.step_flat: Tensor = torch.empty(0)
        #: tensor boundaries, for chains that reduce per tensor (None for elementwise chains)
        self.segments: Segments | None = None
        #: state names holding one value per tensor (a buffer of ``len(params)`` elements)
        self.per_tensor: frozenset[str] = frozenset()

    # ------------------------------------------------------------------ building
    @staticmethod
    def eligible(params: list[Tensor]) -> bool:
        """Same device and floating dtype, contiguous, dense: what one flat buffer can hold."""
        if not params:
            return False
        p0 = params[0]
        if not p0.is_floating_point():
            return False
        return all(
            p.device == p0.device
            and p.dtype == p0.dtype
            and p.is_contiguous()
            and not p.is_sparse
            and p.grad is not None
            and p.grad.dtype == p.dtype
            and not p.grad.is_sparse
            for p in params
        )

    @classmethod
    def build(cls, group: dict[str, Any], params: list[Tensor], optimizer: Any) -> FlatGroup | None:
        """Move ``params``, their grads and their state into flat buffers; None if impossible."""
        if not cls.eligible(params):
            return None
        fg = cls(group, params)
        fg.per_tensor = frozenset(optimizer.transform.per_tensor_state)
        states = [optimizer.state[p] for p in params]
        have = [bool(st) for st in states]
        if any(have) and not all(have):
            return None
        if all(have):
            steps = {int(st["step"].item()) for st in states}
            keys = [k for k in states[0] if k != "step"]
            if len(steps) != 1 or any([k for k in st if k != "step"] != keys for st in states):
                return None
            for k in keys:
                sizes = {
                    st[k].numel() == (1 if k in fg.per_tensor else p.numel())
                    for st, p in zip(states, params)
                }
                empty = all(st[k].numel() == 0 for st in states)
                if not (sizes == {True} or empty):
                    return None
            fg.step = steps.pop()
            # state that has taken a step holds every lazily made buffer: no eager first step
            fg.stepped = fg.step > 0
        p0 = params[0]
        with torch.no_grad():
            fg.param_flat = torch.empty(fg.total, dtype=p0.dtype, device=p0.device)
            fg.grad_flat = torch.empty(fg.total, dtype=p0.dtype, device=p0.device)
            for p, off, n in zip(params, fg.offsets, fg.numels):
                fg.param_flat[off : off + n].copy_(p.detach().reshape(-1))
                fg.grad_flat[off : off + n].copy_(p.grad.reshape(-1))
            for p, off, n in zip(params, fg.offsets, fg.numels):
                p.data = fg.param_flat[off : off + n].view_as(p)
                p.grad = fg.grad_flat[off : off + n].view_as(p)
        fg._param_ptrs = [p.data_ptr() for p in params]
        fg._grad_views = [p.grad for p in params]
        kind = optimizer.transform.segments
        if kind is not None:
            fg.segments = Segments(
                [p.shape for p in params], p0.device, p0.dtype, rows=kind == "rows"
            )
        if fg.step is None:  # fresh state, made on the flat buffer
            fresh = optimizer.transform.init([fg.param_flat])
            for k, v in fresh.items():
                value = v[0]
                if k in fg.per_tensor and value.numel() == 1:  # one value per tensor
                    value = value.reshape(1).repeat(len(params))
                fg.state_flat[k] = value
            fg.step = 0
            for k, flat in fg.state_flat.items():
                for i, (p, off, n) in enumerate(zip(params, fg.offsets, fg.numels)):
                    optimizer.state[p][k] = (
                        torch.empty(0, dtype=flat.dtype, device=flat.device)
                        if flat.numel() == 0
                        else flat[i]
                        if k in fg.per_tensor
                        else flat[off : off + n].view_as(p)
                    )
        else:
            for k in [k for k in states[0] if k != "step"]:
                if states[0][k].numel() == 0 and all(st[k].numel() == 0 for st in states):
                    fg.state_flat[k] = torch.empty(0, dtype=states[0][k].dtype, device=p0.device)
                else:
                    fg.state_flat[k] = torch.cat([st[k].reshape(-1) for st in states])
        fg.step_flat = torch.full((len(params),), float(fg.step), dtype=torch.float32)
        for i, p in enumerate(params):
            optimizer.state[p]["step"] = fg.step_flat[i]
        fg.sync_state_views(optimizer)
        return fg

    def sync_state_views(self, optimizer: Any) -> None:
        """Point per-parameter state entries at slices of newly allocated flat state buffers."""
        for k, flat in self.state_flat.items():
            n = flat.numel()
            if n == 0:
                continue
            if k in self.per_tensor:
                if n != len(self.params):
                    raise RuntimeError(
                        f"per-tensor state {k!r} of {optimizer.transform!r} has {n} elements for "
                        f"{len(self.params)} tensors; pass fused=False"
                    )
                sig = (flat.data_ptr(), n)
                if self._viewed.get(k) != sig:
                    for i, p in enumerate(self.params):
                        optimizer.state[p][k] = flat[i]
                    self._viewed[k] = sig
                continue
            if n != self.total:
                raise RuntimeError(
                    f"state {k!r} of {optimizer.transform!r} is not elementwise ({n} elements for "
                    f"{self.total} parameters) although every transform claims flat_ok; pass "
                    "fused=False"
                )
            sig = (flat.data_ptr(), n)
            if self._viewed.get(k) == sig:
                continue
            for p, off, m in zip(self.params, self.offsets, self.numels):
                optimizer.state[p][k] = flat[off : off + m].view_as(p)
            self._viewed[k] = sig

    # ------------------------------------------------------------------ per step
    def matches(self, params: list[Tensor]) -> bool:
        """True if ``params`` (those with grads this step) are exactly this group's, still ours."""
        if len(params) != len(self.params):
            return False
        for p, q, ptr in zip(params, self.params, self._param_ptrs):
            if p is not q or p.data_ptr() != ptr:
                return False
        return True

    def adopt_grads(self) -> None:
        """Copy in any grad that is not our view (e.g. after model.zero_grad(set_to_none=True)).

        Autograd accumulates into an existing ``.grad`` in place, so after a backward pass each
        gradient is still the very view object set here; only replaced ones need a copy.
        """
        for p, view in zip(self.params, self._grad_views):
            if p.grad is not view:
                view.copy_(p.grad)
                p.grad = view

    def zero_grad(self) -> None:
        """Zero the flat grad buffer in one pass and make every grad our view again."""
        self.grad_flat.zero_()
        for p, view in zip(self.params, self._grad_views):
            if p.grad is not view:
                p.grad = view
