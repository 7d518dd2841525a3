"""The transform core: a gradient transformation and ``chain``.

A transform turns a list of update tensors (the gradients of one param group, at first) into a new
list, reading the group's hyperparameters and keeping per-parameter state. It works on the whole
list at once with ``torch._foreach_*`` operations, never per tensor in a Python loop.

Contract
--------
``init(params) -> dict[str, list[Tensor]]``
    Fresh state for the given parameters: every entry is a list with one tensor per parameter.
``update(updates, state, params, ctx) -> list[Tensor]``
    The new updates. ``state`` holds the lists created by ``init`` (for the parameters that have a
    gradient this step); state tensors are changed **in place**. ``updates`` may be the
    parameters' own ``.grad`` tensors: call ``ctx.writable(updates)`` before changing them in
    place, and return freshly allocated lists through ``ctx.owned(new)`` so that later transforms may
change them in place. The last transform of an optimizer's chain returns the final step, which the optimizer
    adds to the parameters (so learning-rate scaling returns ``-lr * u``).

A transform that gives the same result on one flat concatenation of all tensors of a group as on
the separate tensors (elementwise math, or reductions over the whole group such as a global norm)
sets ``flat_ok = True``; the fused fast path relies on it. A rule that reduces per tensor or per
row can still be ``flat_ok``: it sets ``segments = "tensors"`` (or ``"rows"``) and, when
``ctx.segments`` is not None (it runs on a flat buffer), computes its per-tensor values with the
segmented reductions of :class:`gradkit.core.segments.Segments`. State that holds one value per
tensor (not per element) is named in ``per_tensor_state``; on a flat buffer it is one tensor of
one value per tensor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from gradkit.core.hyperparams import Hyperparameter
from gradkit.core.segments import Segments

__all__ = ["GradientTransformation", "StepContext", "Chain", "chain", "SkipStep"]

TensorList = list[Tensor]
State = dict[str, TensorList]


class _OwnedList(list):
    """A list of tensors that no one else references: later transforms may change it in place."""


class SkipStep(Exception):  # noqa: N818  (a control-flow signal, not an error)
    """Raised by a transform to skip the whole step of a param group (no state changes)."""


@dataclass
class StepContext:
    """What a transform may read besides updates, state and params.

    Attributes:
        group: the param group (hyperparameters such as ``lr``, ``betas``, ``weight_decay``).
        steps: per-parameter step numbers (1 on the first update of that parameter).
        grads: the raw gradients of this step (never modify them in place).
        closure: the user's closure (re-evaluates loss and gradients), or None.
        loss: the loss returned by the closure at the current parameters, or None.
        optimizer: the optimizer that runs the chain.
        segments: on the flat path, where each tensor lies in the flat buffers (for per-tensor
            reductions, :class:`gradkit.core.segments.Segments`); None on the per-tensor path.
        shared: values one transform of the chain leaves for a later one in the same step (keyed
            by the writer, e.g. ``id(self)``; Ranger21's stable weight decay reads the mean
            second moment of its PNM transform here). New for every step and group, so nothing
            outlives the step outside ``optimizer.state``.
    """

    group: Mapping[str, Any]
    steps: list[int]
    grads: TensorList
    closure: Callable[[], Any] | None = None
    loss: Tensor | float | None = None
    optimizer: Any = None
    segments: Segments | None = None
    shared: dict[Any, Any] = field(default_factory=dict)

    @property
    def step(self) -> int:
        """The step number of the group (of its first parameter)."""
        return self.steps[0]

    def loop_scalar(self, value: float) -> float:
        """``value`` as the scalar argument of an elementwise op (a learning rate times a
        factor, a decay factor): under the compiler on a CPU it is computed once
        per step outside the generated per-element loop (see the compiled step's context);
        eagerly it is ``value`` itself."""
        return value

    def per_step(self, fn: Callable[[int], float]) -> float | list[float]:
        """``fn(step)`` per parameter, as a foreach op's scalar argument.

        One Python number when every parameter of the group is on the same step (the usual
        case), else a list with one value per parameter. The single number matters for speed:
        ``torch.compile`` fuses ``_foreach_div_(xs, scalar)`` into the step's kernel but falls
        back to an extra eager pass for a scalar list. Both forms give bit-identical results.
        """
        first = self.steps[0]
        if all(t == first for t in self.steps):
            return fn(first)
        return [fn(t) for t in self.steps]

    def writable(self, updates: TensorList) -> TensorList:
        """Return ``updates`` if it may be modified in place, else a copy that may.

        Only lists marked with :meth:`owned` are modified in place: anything else may alias the
        gradients or a transform's state.
        """
        if isinstance(updates, _OwnedList):
            return updates
        return self.owned(torch._foreach_mul(updates, 1.0))

    def owned(self, updates: TensorList) -> TensorList:
        """Mark a freshly allocated list as writable by later transforms; returns it."""
        return updates if isinstance(updates, _OwnedList) else _OwnedList(updates)

    def is_owned(self, updates: TensorList) -> bool:
        """True if ``updates`` may be changed in place (no copy needed, see :meth:`writable`)."""
        return isinstance(updates, _OwnedList)


class GradientTransformation:
    """Base class of all transforms. Subclasses set ``hyperparameters`` and override ``update``."""

    #: hyperparameters this transform reads from the param group, with defaults and checks
    hyperparameters: ClassVar[Sequence[Hyperparameter]] = ()
    #: True if the transform gives the same result on one flat buffer of all tensors of a group
    flat_ok: ClassVar[bool] = True
    #: True if the transform calls ``ctx.closure`` and so needs one
    needs_closure: ClassVar[bool] = False
    #: True if the math has a meaning on the real view of complex parameters (elementwise
    #: rules); False refuses complex parameters with a clear error (matrix methods)
    complex_ok: ClassVar[bool] = True
    #: True if ``update`` returns ``updates`` unchanged (it acts on params or state only, like
    #: decoupled weight decay); the core may then hand it a ratio still to be formed (below)
    passes_updates_through: ClassVar[bool] = False
    #: None for elementwise rules; ``"tensors"`` / ``"rows"`` for a ``flat_ok`` rule that reduces
    #: per tensor / per row and, on a flat buffer, reads the boundaries from ``ctx.segments``
    segments: ClassVar[str | None] = None
    #: state names (keys of ``init``) that hold one value per tensor, a 0-d tensor each
    per_tensor_state: ClassVar[tuple[str, ...]] = ()
    #: False if the rule's Python control flow depends on values that change every step (an
    #: in-chain lr schedule), so that compiling it would recompile during the run; such chains
    #: are not compiled unless asked for (``fused=True``)
    compile_ok: ClassVar[bool] = True

    def init(self, params: TensorList) -> State:
        return {}

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        raise NotImplementedError

    def specs(self) -> dict[str, Hyperparameter]:
        """Hyperparameter specifications keyed by name."""
        return {h.name: h for h in self.hyperparameters}

    def check_group(self, group: Mapping[str, Any]) -> None:
        """Raise ValueError if the group's values are invalid together (each alone is checked by
        its specification); e.g. Nesterov momentum needs ``dampening == 0``."""

    def state_names(self) -> tuple[str, ...]:
        """The names of this transform's per-parameter state (the keys ``init`` returns)."""
        return tuple(self.init([]).keys())

    def legacy_state_names(self) -> dict[str, str]:
        """Old (positional, gradkit <= 0.1) state key -> current name, for loading old
        checkpoints. A plain transform's keys never changed; composites override this."""
        return {name: name for name in self.state_names()}

    # Optional: ``fill_missing_state(saved)`` completes one parameter's saved state (a dict of
    # this transform's own state names) with buffers that an older version did not keep, computed
    # from the ones it did, so that older checkpoints load (called by ``load_state_dict``).
    #
    # Optional fast forms, used by the core to fuse the end of a chain (see Chain.apply):
    #
    # ``update_as_ratio(updates, state, params, ctx) -> (num, den, divisor)``: the same update as
    #     ``update``, returned unformed as ``num / den / divisor`` (``divisor`` one number or one
    #     per tensor), so that the step ``p -= (lr / divisor) * num / den`` is one ``addcdiv_``.
    # ``apply_step(params, updates, state, ctx)`` / ``apply_ratio(params, num, den, divisor,
    #     ctx)``: for the last transform of a chain (the learning rate, or a rule that forms the
    #     new parameters itself, like MADGRAD's): change ``params`` in place instead of
    #     returning the step, so the step costs no extra pass.

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def resolve_state_names(
    parts: Sequence[tuple[str, tuple[str, ...]]],
) -> list[dict[str, str]]:
    """Give every part's state names a unique name in the combined state.

    ``parts`` holds ``(prefix, names)`` per sub-transform. A name used by one part only keeps it
    (``exp_avg``), so state dicts read like torch.optim's; a name used by several parts is
    qualified by the part's prefix (``lookahead.exp_avg``), and by its position too if two parts
    share a prefix. Returns one ``{name: unique name}`` map per part.
    """
    count: dict[str, int] = {}
    for _, names in parts:
        for n in names:
            count[n] = count.get(n, 0) + 1
    prefixes = [prefix for prefix, _ in parts]
    out: list[dict[str, str]] = []
    for i, (prefix, names) in enumerate(parts):
        qual = prefix if prefixes.count(prefix) == 1 else f"{prefix}{i}"
        out.append({n: n if count[n] == 1 else f"{qual}.{n}" for n in names})
    return out


class Chain(GradientTransformation):
    """Apply transforms one after the other.

    State keys name what they hold (``exp_avg``, ``momentum_buffer``): each transform's own
    names, qualified only where two transforms of the chain use the same name (see
    :func:`resolve_state_names`).
    """

    def __init__(self, *transforms: GradientTransformation) -> None:
        flat: list[GradientTransformation] = []
        for t in transforms:
            if isinstance(t, Chain):
                flat.extend(t.transforms)
            elif isinstance(t, GradientTransformation):
                flat.append(t)
            else:
                raise TypeError(f"chain() takes GradientTransformation objects, got {t!r}")
        self.transforms: tuple[GradientTransformation, ...] = tuple(flat)
        self._names = resolve_state_names(
            [(getattr(t, "state_prefix", _snake(type(t).__name__)), t.state_names()) for t in flat]
        )

    @property
    def flat_ok(self) -> bool:  # type: ignore[override]
        return all(t.flat_ok for t in self.transforms)

    def fill_missing_state(self, saved: dict[str, Any]) -> None:
        """Let each transform fill, in one parameter's saved state, the buffers that an older
        version of it did not keep (``saved`` uses the chain's state names)."""
        for t, names in zip(self.transforms, self._names):
            fill = getattr(t, "fill_missing_state", None)
            if fill is None:
                continue
            local = {mine: saved[unique] for mine, unique in names.items() if unique in saved}
            fill(local)
            for mine, unique in names.items():
                if mine in local and unique not in saved:
                    saved[unique] = local[mine]

    @property
    def needs_closure(self) -> bool:  # type: ignore[override]
        return any(t.needs_closure for t in self.transforms)

    @property
    def compile_ok(self) -> bool:  # type: ignore[override]
        return all(t.compile_ok for t in self.transforms)

    @property
    def segments(self) -> str | None:  # type: ignore[override]
        """``"rows"`` if a transform reduces per row, else ``"tensors"`` if one reduces per
        tensor, else None."""
        kinds = {t.segments for t in self.transforms}
        return "rows" if "rows" in kinds else "tensors" if "tensors" in kinds else None

    @property
    def per_tensor_state(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(
            names[k] for t, names in zip(self.transforms, self._names) for k in t.per_tensor_state
        )

    @property
    def complex_ok(self) -> bool:  # type: ignore[override]
        return all(t.complex_ok for t in self.transforms)

    def specs(self) -> dict[str, Hyperparameter]:
        out: dict[str, Hyperparameter] = {}
        for t in self.transforms:
            out.update(t.specs())
        return out

    def check_group(self, group: Mapping[str, Any]) -> None:
        for t in self.transforms:
            t.check_group(group)

    def state_names(self) -> tuple[str, ...]:
        return tuple(n for names in self._names for n in names.values())

    def legacy_state_names(self) -> dict[str, str]:
        return {
            f"{i}.{old}": names[new]
            for i, (t, names) in enumerate(zip(self.transforms, self._names))
            for old, new in t.legacy_state_names().items()
        }

    def init(self, params: TensorList) -> State:
        state: State = {}
        for t, names in zip(self.transforms, self._names):
            for key, value in t.init(params).items():
                if len(value) != len(params):
                    raise ValueError(
                        f"{type(t).__name__}.init returned {len(value)} tensors for {key!r}, "
                        f"expected one per parameter ({len(params)})"
                    )
                state[names[key]] = value
        return state

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        return self._run(range(len(self.transforms)), updates, state, params, ctx)

    def apply(self, params: TensorList, grads: TensorList, state: State, ctx: StepContext) -> None:
        """One optimizer step: ``params += chain(grads)`` (of ``-grads`` with ``maximize``).

        The end of the chain is fused when its transforms allow it: a last transform with
        ``apply_step`` (the learning rate) adds its step to ``params`` in place, and if the
        transform before it (past any that ``passes_updates_through``) has
        ``update_as_ratio``, the whole step is one ``p.addcdiv_(num, den, value=-lr/divisor)``,
        the passes torch.optim's foreach code makes. The result equals the unfused chain's to
        rounding. A ``SkipStep`` raised by a transform leaves ``params`` untouched.
        """
        updates = torch._foreach_neg(grads) if ctx.group["maximize"] else grads
        ts = self.transforms
        if not ts or not hasattr(ts[-1], "apply_step"):
            torch._foreach_add_(params, self.update(updates, state, params, ctx))
            return
        j = len(ts) - 2
        while j >= 0 and ts[j].passes_updates_through:
            j -= 1
        ratio = j >= 0 and hasattr(ts[j], "update_as_ratio")
        head = j if ratio else len(ts) - 1
        updates = self._run(range(head), updates, state, params, ctx)
        if not ratio:
            ts[-1].apply_step(params, updates, self._sub(len(ts) - 1, state), ctx)
            return
        num, den, divisor = ts[j].update_as_ratio(updates, self._sub(j, state), params, ctx)
        self._run(range(j + 1, len(ts) - 1), num, state, params, ctx)  # params/state only
        ts[-1].apply_ratio(params, num, den, divisor, ctx)

    def _sub(self, i: int, state: State) -> State:
        return {local: state[name] for local, name in self._names[i].items()}

    def _run(
        self, which: range, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        for i in which:
            t = self.transforms[i]
            seg = ctx.segments
            if seg is not None and t.segments is not None and seg.use_views(params[0]):
                updates = _update_on_views(t, updates, self._sub(i, state), params, ctx)
            else:
                updates = t.update(updates, self._sub(i, state), params, ctx)
        return updates

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"chain({inner})"


def _update_on_views(
    t: GradientTransformation,
    updates: TensorList,
    state: State,
    params: TensorList,
    ctx: StepContext,
) -> TensorList:
    """Run a per-tensor-reducing transform's per-tensor form on views of one flat buffer.

    ``updates``, ``state`` and ``params`` are one-element lists of flat buffers (per-tensor
    state: one value per tensor); the transform sees lists of per-tensor views and
    ``ctx.segments = None``. Its in-place changes land in the flat buffers; a result made of
    the very views it was given (of the updates or of a state buffer) is returned as that flat
    buffer, any other result is concatenated into a new one.
    """
    seg = ctx.segments
    assert seg is not None
    per_tensor = set(t.per_tensor_state)
    u_views = seg.views(updates[0])
    if ctx.is_owned(updates):
        u_views = ctx.owned(u_views)
    given: list[tuple[TensorList, TensorList]] = [(u_views, updates)]  # (views, their flat list)
    view_state: State = {}
    for key, flat in state.items():
        view_state[key] = seg.views(flat[0], per_tensor=key in per_tensor)
        given.append((view_state[key], flat))
    sub = dataclasses.replace(
        ctx,
        segments=None,
        steps=[ctx.step] * seg.count,
        grads=seg.views(ctx.grads[0]),
    )
    out = t.update(u_views, view_state, seg.views(params[0]), sub)
    for key, flat in state.items():  # a lazily allocated buffer: allocated per view, joined
        if flat[0].numel() == 0 and any(v.numel() for v in view_state[key]):
            flat[0] = torch.cat([v.reshape(-1) for v in view_state[key]])
    for views, flat in given:  # the views it was given (changed in place): their flat buffer
        if len(out) == len(views) and all(o is v for o, v in zip(out, views)):
            return flat
    return ctx.owned([torch.cat([o.reshape(-1) for o in out])])


def chain(*transforms: GradientTransformation) -> Chain:
    """Compose transforms, applied left to right.

    >>> from gradkit.transforms import DecoupledWeightDecay, ScaleByAdam, ScaleByLearningRate
    >>> adamw = chain(ScaleByAdam(), DecoupledWeightDecay(), ScaleByLearningRate())
    >>> sorted(adamw.specs())  # the group hyperparameters the chain reads
    ['amsgrad', 'betas', 'eps', 'lr', 'weight_decay']
    >>> adamw.state_names()
    ('exp_avg', 'exp_avg_sq', 'max_exp_avg_sq')
    """
    return Chain(*transforms)
