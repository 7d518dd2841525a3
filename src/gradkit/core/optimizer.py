"""``ChainOptimizer``: a ``torch.optim.Optimizer`` that runs a chain of gradient transforms.

Each step, for every param group, it gathers the parameters that have a gradient, lets the chain
turn their gradients into steps (reading the group's hyperparameters, so per-group settings and
``torch.optim.lr_scheduler`` work), and adds the steps to the parameters. State lives in
``optimizer.state[param]`` like torch.optim's (keys ``"step"`` and ``"<transform index>.<name>"``),
so ``state_dict`` / ``load_state_dict`` round-trip and resume bit-exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from gradkit.core.compiled import encode_hyperparameters, make_compiled_group_update
from gradkit.core.flat import FlatGroup, flat_update
from gradkit.core.hyperparams import Hyperparameter, flag, validate_group
from gradkit.core.transform import Chain, GradientTransformation, SkipStep, StepContext

__all__ = ["ChainOptimizer"]

_MAXIMIZE = flag("maximize", False)


class ChainOptimizer(Optimizer):
    """Run ``transform`` (usually a :func:`gradkit.chain`) as a torch optimizer.

    Args:
        params: parameters or param-group dicts, as for any torch optimizer.
        transform: the transform (or chain) that turns gradients into steps; its last stage
            returns the step to add to the parameters (e.g. ``-lr * direction``).
        defaults: hyperparameter values for groups that do not set them; missing ones take the
            transforms' own defaults. ``maximize=True`` ascends instead of descending.
        fused: the fast paths (docs/performance.md). ``None`` (default): flat buffers + compiled
            step for param groups on CUDA when every transform is ``flat_ok``; ``True``: that
            wherever possible (also on CPU); ``"flat"``: flat buffers without compiling (for
            checks); ``"compile"``: the per-tensor lists under ``torch.compile``, for chains
            that are not ``flat_ok`` (per-tensor reductions); ``False``: always the eager
            multi-tensor path.

    Example:
        >>> opt = ChainOptimizer(model.parameters(), chain(scale_by_adam(), scale_by_lr()), {"lr": 1e-3})
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        transform: GradientTransformation,
        defaults: Mapping[str, Any] | None = None,
        *,
        fused: bool | str | None = None,
    ) -> None:
        if not isinstance(transform, Chain):
            transform = Chain(transform)
        if fused not in (None, True, False, "flat", "compile"):
            raise ValueError(
                f"Invalid fused: {fused!r}; fused must be None, True, False, 'flat' or 'compile'"
            )
        if fused in (True, "flat") and not transform.flat_ok:
            bad = [type(t).__name__ for t in transform.transforms if not t.flat_ok]
            raise ValueError(
                f"fused={fused!r} needs every transform to be flat_ok; not flat_ok: {bad}"
            )
        self.fused = fused
        self._flat: dict[int, FlatGroup] = {}
        self._compiled: Any = None  # the compiled step, made on first use
        self._compile_backend = "inductor"
        self.transform: Chain = transform
        specs = dict(transform.specs())
        specs.setdefault("maximize", _MAXIMIZE)
        self._specs: dict[str, Hyperparameter] = specs
        merged = {name: spec.default for name, spec in specs.items()}
        merged.update(defaults or {})
        validate_group(merged, specs)
        super().__init__(params, merged)

    # ------------------------------------------------------------------ param groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        try:
            validate_group(self.param_groups[-1], self._specs)
        except ValueError:
            self.param_groups.pop()
            raise

    # ------------------------------------------------------------------ stepping
    @property
    def needs_closure(self) -> bool:
        """True if ``step`` must be given a closure (SAM, Entropy-SGD, extragradient, ...)."""
        return self.transform.needs_closure or bool(getattr(self, "requires_closure", False))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step.

        Args:
            closure: re-evaluates the model and returns the loss (with gradients computed by
                ``loss.backward()``). Required by methods that evaluate the loss more than once.
        """
        if closure is None and self.needs_closure:
            raise RuntimeError(
                f"{type(self).__name__} needs a closure that zeroes the gradients, recomputes the "
                "loss, calls loss.backward() and returns the loss: optimizer.step(closure)"
            )
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if not self._flat_step(group, closure, loss):
                self._flat.pop(id(group), None)  # eager step: rebuild flat buffers next time
                self._step_group(group, closure, loss)
        return loss

    # ------------------------------------------------------------------ flat fast path
    def _flat_mode(self, group: dict[str, Any]) -> str | None:
        """ "compiled", "eager" or None (eager multi-tensor path) for this group."""
        if self.fused in (False, "compile") or not self.transform.flat_ok or self.needs_closure:
            return None
        if self.fused == "flat":
            return "eager"
        if self.fused is None:
            first = group["params"][0] if group["params"] else None
            if first is None or first.device.type != "cuda":
                return None
        return "compiled"

    def _flat_step(
        self, group: dict[str, Any], closure: Callable[[], Any] | None, loss: Any
    ) -> bool:
        """Step ``group`` on its flat buffers; False if the flat path does not apply now."""
        mode = self._flat_mode(group)
        if mode is None:
            return False
        fg = self._flat.get(id(group))
        params = [p for p in group["params"] if p.grad is not None]
        if fg is None or fg.group is not group or not fg.matches(params):
            if any(p.grad.is_sparse for p in params):
                return False  # the eager path raises the clear error
            fg = FlatGroup.build(group, params, self)
            if fg is None:
                return False
            self._flat[id(group)] = fg
        fg.adopt_grads()
        step = fg.step + 1
        state = {k: [v] for k, v in fg.state_flat.items()}
        try:
            if mode == "compiled" and closure is None:
                self._compiled_step()(
                    self.transform, [fg.param_flat], [fg.grad_flat], state,
                    encode_hyperparameters(group), step, self,
                )  # fmt: skip
            else:
                hp = {k: v for k, v in group.items() if k != "params"}
                flat_update(
                    self.transform, fg.param_flat, fg.grad_flat, state, hp, step, self, closure,
                    loss,
                )  # fmt: skip
        except SkipStep:
            return True
        for k, v in state.items():  # a transform may have rebound a lazily allocated buffer
            fg.state_flat[k] = v[0]
        fg.step = step
        fg.step_flat.add_(1.0)  # every state[p]["step"] is a view into it
        fg.sync_state_views(self)
        return True

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients; those of flat groups are zeroed in place (one pass), see below.

        Parameters on the flat fast path keep their gradients as views into one flat buffer,
        so their gradients become zero tensors rather than None even with ``set_to_none=True``.
        """
        if not self._flat:
            super().zero_grad(set_to_none)
            return
        flat_ids: set[int] = set()
        for fg in self._flat.values():
            fg.zero_grad()
            flat_ids.update(id(p) for p in fg.params)
        for group in self.param_groups:
            for p in group["params"]:
                if id(p) in flat_ids or p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    if p.grad.grad_fn is not None:
                        p.grad.detach_()
                    else:
                        p.grad.requires_grad_(False)
                    p.grad.zero_()

    def _gather(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
        params: list[Tensor] = []
        grads: list[Tensor] = []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(
                    f"{type(self).__name__} does not support sparse gradients (parameter of shape "
                    f"{tuple(p.shape)}); use dense gradients, e.g. nn.Embedding(sparse=False)"
                )
            params.append(p)
            grads.append(p.grad)
        return params, grads

    def _init_state(self, params: list[Tensor]) -> None:
        fresh = [p for p in params if not self.state[p]]
        if not fresh:
            return
        new_state = self.transform.init(fresh)
        for i, p in enumerate(fresh):
            st = self.state[p]
            st["step"] = torch.tensor(0.0, dtype=torch.float32)
            for key, values in new_state.items():
                st[key] = values[i]

    def _step_group(
        self, group: dict[str, Any], closure: Callable[[], Any] | None, loss: Any
    ) -> None:
        params, grads = self._gather(group)
        if not params:
            return
        self._init_state(params)
        states = [self.state[p] for p in params]
        step_tensors = [st["step"] for st in states]
        torch._foreach_add_(step_tensors, 1.0)
        keys = [k for k in states[0] if k != "step"]
        state = {k: [st[k] for st in states] for k in keys}
        steps = [int(s.item()) for s in step_tensors]
        try:
            if self._use_compiled_group(steps, closure):
                self._compiled_step()(
                    self.transform, params, grads, state, encode_hyperparameters(group), steps[0],
                    self,
                )  # fmt: skip
            else:
                ctx = StepContext(
                    group=group, steps=steps, grads=grads, closure=closure, loss=loss,
                    optimizer=self,
                )  # fmt: skip
                self.transform.apply(params, grads, state, ctx)
        except SkipStep:
            torch._foreach_sub_(step_tensors, 1.0)

    def _use_compiled_group(self, steps: list[int], closure: Callable[[], Any] | None) -> bool:
        """``fused="compile"`` applies: no closure, and every parameter on the same step."""
        if self.fused != "compile" or closure is not None or self.needs_closure:
            return False
        return all(t == steps[0] for t in steps)

    def _compiled_step(self) -> Callable[..., None]:
        """The compiled :func:`~gradkit.core.compiled.group_update`, made on first use (flat
        groups pass one-element lists of flat buffers, ``fused="compile"`` per-tensor lists)."""
        if self._compiled is None:
            self._compiled = make_compiled_group_update(self._compile_backend)
        return self._compiled

    # ------------------------------------------------------------------ state dict
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict; state tensors keep their saved dtype (bit-exact resume)."""
        self._flat.clear()  # flat buffers are rebuilt from the loaded per-param state
        super().load_state_dict(state_dict)
        saved_groups = state_dict["param_groups"]
        saved_state = state_dict["state"]
        for saved, group in zip(saved_groups, self.param_groups):
            for pid, p in zip(saved["params"], group["params"]):
                if pid not in saved_state:
                    continue
                for key, value in saved_state[pid].items():
                    if isinstance(value, Tensor):
                        device = value.device if key == "step" else p.device
                        self.state[p][key] = value.to(device=device, copy=True)
