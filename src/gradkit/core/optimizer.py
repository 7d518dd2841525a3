"""``ChainOptimizer``: a ``torch.optim.Optimizer`` that runs a chain of gradient transforms.

Each step, for every param group, it gathers the parameters that have a gradient, lets the chain
turn their gradients into steps (reading the group's hyperparameters, so per-group settings and
``torch.optim.lr_scheduler`` work), and adds the steps to the parameters. State lives in
``optimizer.state[param]`` like torch.optim's (keys ``"step"`` and ``"<transform index>.<name>"``),
so ``state_dict`` / ``load_state_dict`` round-trip and resume bit-exactly.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from gradkit.core.compiled import compile_settings, encode_hyperparameters, shared_group_update
from gradkit.core.flat import FlatGroup, flat_update
from gradkit.core.hyperparams import Hyperparameter, choice, flag, validate_group
from gradkit.core.max_abs import max_abs
from gradkit.core.state_dict import check_and_migrate_state_dict
from gradkit.core.transform import Chain, GradientTransformation, SkipStep, StepContext

__all__ = ["ChainOptimizer"]

MAXIMIZE = flag("maximize", False)
#: the construction options every gradkit optimizer takes
FUSED = choice("fused", None, (None, True, False, "flat", "compile"))

#: On a CPU, the default (``fused=None``) compiles the flat step of an elementwise chain once a
#: param group has done this many parameter-steps (its element count times its steps) eagerly:
#: the work at which the eager steps' excess over compiled ones (about 2.5 ns per element and
#: step on the 2-core machine of docs/benchmarks.md) has cost what compiling costs (about 2.5 s
#: with inductor's cache warm, 12 s cold). Paying for the compiler only once it has been
#: matched by time already lost ("rent until the rent paid equals the price") costs at most
#: twice the better of the two choices made in hindsight; short runs and small models (the test
#: suite, ``gradkit compare``'s tasks) never compile. A function of the step count, so that a
#: resumed run switches at the same step as an uninterrupted one.
CPU_COMPILE_AFTER_ELEMENT_STEPS = 2_000_000_000
#: ... and only for groups of at least this many elements: below it the compiled step's fixed
#: host cost (about 0.1 ms a step) eats the saving (1 thread: SGD with momentum 128 us a step
#: compiled against 101 us eagerly on 79k parameters in 6 tensors, 164 against 167 us on 262k).
CPU_COMPILE_MIN_ELEMENTS = 262_144
NONFINITE = choice("nonfinite", "ignore", ("ignore", "skip", "raise"))

_log = logging.getLogger(__name__)


class NonFiniteGradientError(FloatingPointError):
    """A gradient holds NaN or infinity and the optimizer was told to refuse it."""


def gradients_are_finite(grads: list[Tensor]) -> bool:
    """True if no gradient holds NaN or infinity (one reduction and one read back)."""
    if not grads:
        return True
    norms = max_abs(grads)
    return bool(torch.isfinite(torch.stack([n.float() for n in norms]).sum()))


def nonfinite_error(grads: list[Tensor]) -> NonFiniteGradientError:
    """The error for ``nonfinite="raise"``, naming the shapes of the offending gradients."""
    bad = [g for g in grads if not bool(torch.isfinite(g).all())]
    shapes = ", ".join(str(tuple(g.shape)) for g in bad[:5])
    return NonFiniteGradientError(
        f"non-finite gradient (NaN or inf) in {len(bad)} parameter(s) of shapes {shapes}; pass "
        "nonfinite='skip' to skip such steps, or find the overflow (lower the lr, use gradient "
        "clipping or a loss scaler)"
    )


class ChainOptimizer(Optimizer):
    """Run ``transform`` (usually a :func:`gradkit.chain`) as a torch optimizer.

    Args:
        params: parameters or param-group dicts, as for any torch optimizer.
        transform: the transform (or chain) that turns gradients into steps; its last stage
            returns the step to add to the parameters (e.g. ``-lr * direction``).
        defaults: hyperparameter values for groups that do not set them; missing ones take the
            transforms' own defaults. ``maximize=True`` ascends instead of descending.
        fused: the fast paths (docs/performance.md). ``None`` (default): flat buffers + compiled
            step for param groups on CUDA when every transform is ``flat_ok`` and
            ``compile_ok`` (no step-dependent Python control flow); on a CPU the same for
            elementwise chains once the group's eager steps have cost what compiling costs
            (``CPU_COMPILE_AFTER_ELEMENT_STEPS`` parameter-steps: 95 steps of 21M parameters;
            never for groups under ``CPU_COMPILE_MIN_ELEMENTS``); ``True``: compiled from the
            second step wherever possible (also on CPU); ``"flat"``: flat buffers without
            compiling (for checks); ``"compile"``: the per-tensor lists under ``torch.compile``, for chains
            that are not ``flat_ok`` (per-tensor reductions); ``False``: always the eager
            multi-tensor path.
        nonfinite: what a step does when a gradient holds NaN or infinity:
            ``"ignore"`` (default, as torch.optim: the step runs and the NaN spreads),
            ``"skip"`` (the whole step is skipped: parameters, state and step counts of every
            group stay as they were, like a loss scaler's skipped step) or ``"raise"``
            (:class:`NonFiniteGradientError`). Checking costs one reduction over the gradients
            and one read back per step.

    Construction options (``fused``, ``nonfinite``, and a named optimizer's own such as
    ``amsgrad``) are set once for the whole optimizer; a param group that sets one is refused.
    Group hyperparameters (``lr``, ``betas``, ...) are validated for every group and read every
    step. Complex parameters are updated through their real view (as torch.optim does) by chains
    whose transforms all allow it; zero-element parameters are skipped.

    Example:
        >>> import torch
        >>> from gradkit import ChainOptimizer, chain
        >>> from gradkit.transforms import ScaleByAdam, ScaleByLearningRate
        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> opt = ChainOptimizer([w], chain(ScaleByAdam(), ScaleByLearningRate()), {"lr": 0.1})
        >>> w.grad = torch.tensor([1.0, -2.0, 0.5])
        >>> opt.step()
        >>> w.detach()  # Adam's first step moves every coordinate by lr against its gradient
        tensor([0.9000, 1.1000, 0.9000])
        >>> sorted(opt.state[w])
        ['exp_avg', 'exp_avg_sq', 'max_exp_avg_sq', 'step']
    """

    #: names of construction options, which a param group may not set
    construction_options: frozenset[str] = frozenset({"fused", "nonfinite"})

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        transform: GradientTransformation,
        defaults: Mapping[str, Any] | None = None,
        *,
        fused: bool | str | None = None,
        nonfinite: str = "ignore",
        specs: Mapping[str, Hyperparameter] | None = None,
    ) -> None:
        if not isinstance(transform, Chain):
            transform = Chain(transform)
        FUSED.validate(fused)
        NONFINITE.validate(nonfinite)
        if fused in (True, "flat") and not transform.flat_ok:
            bad = [type(t).__name__ for t in transform.transforms if not t.flat_ok]
            raise ValueError(
                f"fused={fused!r} needs every transform to be flat_ok; not flat_ok: {bad}"
            )
        self.fused = fused
        self.nonfinite = nonfinite
        #: set when a compiled step failed to compile: eager from then on (``_run_compiled``)
        self._compile_failed = False
        self._flat: dict[int, FlatGroup] = {}
        #: whether the chain can take the flat path at all (set at the first step)
        self._flat_possible: bool | None = None
        #: (id(group), number of params, id(first param)) -> elements of the group's params, or -1
        #: for a chain that never switches (the CPU default's switch; a cache, rebuilt on demand)
        self._group_numel: dict[tuple[int, int, int], int] = {}
        self._compiled: Any = None  # {(dtype, device, path, length): shared compiled step}
        self._compile_backend = "inductor"
        self.transform: Chain = transform
        specs = dict(transform.specs() if specs is None else specs)
        specs.setdefault("maximize", MAXIMIZE)
        merged = {name: spec.default for name, spec in specs.items()}
        merged.update(defaults or {})
        self._specs: dict[str, Hyperparameter] = specs
        validate_group(merged, specs)
        super().__init__(params, merged)

    # ------------------------------------------------------------------ param groups
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        options = sorted(set(param_group) & self.construction_options)
        if options:
            name = options[0]
            raise ValueError(
                f"{name} is a construction option of {type(self).__name__}: it is set once for "
                f"the whole optimizer ({type(self).__name__}(params, {name}=...)) and cannot be "
                "set per param group"
            )
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            validate_group(group, self._specs)
            self.transform.check_group(group)
            if not self.transform.complex_ok and any(p.is_complex() for p in group["params"]):
                raise ValueError(
                    f"{type(self).__name__} does not take complex parameters: its update has no "
                    "meaning on their real view (a matrix method); use real parameters"
                )
        except ValueError:
            self.param_groups.pop()
            raise

    # ------------------------------------------------------------------ copies
    def __getstate__(self) -> dict[str, Any]:
        """Everything but caches (flat buffers, compiled steps), which are rebuilt on demand."""
        state = dict(self.__dict__)
        state["_flat"] = {}
        state["_compiled"] = None
        state["_group_numel"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for name, value in (
            ("_flat_possible", None),
            ("_group_numel", {}),
            ("_compile_failed", False),
        ):
            self.__dict__.setdefault(name, value)  # attributes an older pickle lacks

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
        self._step_groups(closure, loss)
        return loss

    def _step_groups(self, closure: Callable[[], Any] | None, loss: Any) -> None:
        """Step every param group with the gradients now in ``p.grad``, after the ``nonfinite``
        check (one for the whole step: a skipped step leaves every group untouched)."""
        if not self._finite_or_skip():
            return
        for group in self.param_groups:
            if not self._flat_step(group, closure, loss):
                self._flat.pop(id(group), None)  # eager step: rebuild flat buffers next time
                self._step_group(group, closure, loss)

    # ------------------------------------------------------------------ flat fast path
    def _flat_mode(self, group: dict[str, Any]) -> str | None:
        """ "compiled", "eager" or None (eager multi-tensor path) for this group."""
        if self.fused in (False, "compile"):
            return None
        if self._flat_possible is None:  # fixed once the optimizer is built; read every step
            self._flat_possible = self.transform.flat_ok and not self.needs_closure
        if not self._flat_possible:
            return None
        if self.fused == "flat":
            return "eager"
        if self.fused is None:
            first = group["params"][0] if group["params"] else None
            if first is None:
                return None
            if first.device.type == "cpu":
                return "compiled" if self._cpu_compile_pays(group) else None
            if first.device.type != "cuda" or not self.transform.compile_ok:
                return None
        return "compiled"

    def _cpu_compile_pays(self, group: dict[str, Any]) -> bool:
        """The CPU default's choice (``CPU_COMPILE_AFTER_ELEMENT_STEPS``): compile the flat step
        once this group's eager steps have cost what compiling costs. Not for chains that
        reduce per tensor (their compiled segmented form is slower than the eager per-tensor
        one on a CPU, docs/performance.md). Called every step of every eager CPU group: the
        common answer (a small group, or a chain that never switches) costs one lookup."""
        params = group["params"]
        key = (id(group), len(params), id(params[0]))
        total = self._group_numel.get(key)
        if total is None:  # the group's size (-1: this chain never switches), summed once
            switches = self.transform.segments is None and self.transform.compile_ok
            total = sum(p.numel() for p in params) if switches else -1
            self._group_numel[key] = total
        if total < 0 or total < CPU_COMPILE_MIN_ELEMENTS:
            return False
        fg = self._flat.get(id(group))
        if fg is not None and fg.group is group:
            return True  # already switched; steps only grow
        st = next((self.state[p] for p in params if self.state.get(p)), None)
        done = float(st["step"]) if st is not None and "step" in st else 0.0
        if done * total < CPU_COMPILE_AFTER_ELEMENT_STEPS:
            return False
        numel = sum(p.numel() for p in params if p.grad is not None)  # those that step
        if numel < CPU_COMPILE_MIN_ELEMENTS or done * numel < CPU_COMPILE_AFTER_ELEMENT_STEPS:
            return False
        _log.info(
            "%s: compiling the step of a group of %d parameters after %d eager steps "
            "(CPU default; fused=False keeps the eager path)",
            type(self).__name__, numel, int(done),
        )  # fmt: skip
        return True

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
            # the first step on new flat buffers runs eagerly: it allocates lazily made state
            # (momentum buffers, AMSGrad's max), so the compiled code never sees it change
            compiled = mode == "compiled" and closure is None and fg.stepped
            compiled = compiled and not self._compile_failed
            if compiled:
                p0 = fg.param_flat
                compiled = self._run_compiled(
                    self._compiled_step(p0.dtype, p0.device.type, True), True,
                    self.transform, [fg.param_flat], [fg.grad_flat], state,
                    encode_hyperparameters(group), step, fg.segments,
                )  # fmt: skip
            if not compiled:
                hp = {k: v for k, v in group.items() if k != "params"}
                flat_update(
                    self.transform, fg.param_flat, fg.grad_flat, state, hp, step, self, closure,
                    loss, fg.segments,
                )  # fmt: skip
        except SkipStep:
            return True
        for k, v in state.items():  # a transform may have rebound a lazily allocated buffer
            fg.state_flat[k] = v[0]
        fg.step = step
        fg.stepped = True
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

    def _gather(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """The parameters of ``group`` that take a step, their gradients, and the parameters
        whose ``self.state`` entries they use.

        Parameters without a gradient and zero-element parameters are left out; complex ones
        enter as their real views (``torch.view_as_real``), as in torch.optim.
        """
        params: list[Tensor] = []
        grads: list[Tensor] = []
        owners: list[Tensor] = []
        for p in group["params"]:
            if p.grad is None or p.numel() == 0:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(
                    f"{type(self).__name__} does not support sparse gradients (parameter of shape "
                    f"{tuple(p.shape)}); use dense gradients, e.g. nn.Embedding(sparse=False)"
                )
            owners.append(p)
            if p.is_complex():
                params.append(torch.view_as_real(p))
                grads.append(torch.view_as_real(p.grad))
            else:
                params.append(p)
                grads.append(p.grad)
        return params, grads, owners

    def _finite_or_skip(self) -> bool:
        """Apply the ``nonfinite`` policy to the gradients of all groups; False: skip the step."""
        if self.nonfinite == "ignore":
            return True
        grads = [
            p.grad
            for group in self.param_groups
            for p in group["params"]
            if p.grad is not None and not p.grad.is_sparse and p.numel() > 0
        ]
        if gradients_are_finite(grads):
            return True
        if self.nonfinite == "skip":
            return False
        raise nonfinite_error(grads)

    def _init_state(self, params: list[Tensor], owners: list[Tensor]) -> None:
        fresh = [i for i, p in enumerate(owners) if not self.state[p]]
        if not fresh:
            return
        new_state = self.transform.init([params[i] for i in fresh])
        for i, j in enumerate(fresh):
            st = self.state[owners[j]]
            st["step"] = torch.tensor(0.0, dtype=torch.float32)
            for key, values in new_state.items():
                st[key] = values[i]

    def _step_group(
        self, group: dict[str, Any], closure: Callable[[], Any] | None, loss: Any
    ) -> None:
        params, grads, owners = self._gather(group)
        if not params:
            return
        self._init_state(params, owners)
        states = [self.state[p] for p in owners]
        step_tensors = [st["step"] for st in states]
        torch._foreach_add_(step_tensors, 1.0)
        keys = [k for k in states[0] if k != "step"]
        state = {k: [st[k] for st in states] for k in keys}
        steps = [int(t) for t in torch.stack(step_tensors).tolist()]  # one read, not one a tensor
        try:
            compiled = self._use_compiled_group(steps, closure)
            if compiled:
                fn = self._compiled_step(params[0].dtype, params[0].device.type, False, len(params))
                compiled = self._run_compiled(
                    fn, False, self.transform, params, grads, state,
                    encode_hyperparameters(group), steps[0],
                )  # fmt: skip
            if not compiled:
                ctx = StepContext(
                    group=group, steps=steps, grads=grads, closure=closure, loss=loss,
                    optimizer=self,
                )  # fmt: skip
                self.transform.apply(params, grads, state, ctx)
        except SkipStep:
            torch._foreach_sub_(step_tensors, 1.0)

    def _use_compiled_group(self, steps: list[int], closure: Callable[[], Any] | None) -> bool:
        """``fused="compile"`` applies: no closure, every parameter on the same step, and not
        the first step (which runs eagerly and allocates lazily made state, so that the
        compiled code never sees a buffer change size)."""
        if self.fused != "compile" or closure is not None or self.needs_closure:
            return False
        if self._compile_failed:
            return False
        return steps[0] > 1 and all(t == steps[0] for t in steps)

    def _run_compiled(self, fn: Callable[..., None], flat: bool, *args: Any) -> bool:
        """Call a compiled step; False (and one warning) if compiling it failed.

        A compiler that fails (no C++ compiler for inductor on a CPU, no Triton, an
        unsupported op on some device) must not stop training: the optimizer then steps on
        the eager path, which computes the same rule, for the rest of its life. Errors of the
        step itself are raised again by that eager step.
        """
        try:
            with compile_settings(flat=flat):
                fn(*args)
        except torch._dynamo.exc.TorchDynamoException as err:
            self._compile_failed = True
            cause = getattr(err, "inner_exception", None) or err.__cause__ or err
            first = (str(cause).strip().splitlines() or [""])[0][:200]
            warnings.warn(
                f"{type(self).__name__}: compiling the optimizer step failed "
                f"({type(err).__name__}: {type(cause).__name__}: {first}); it steps without "
                "compiling from now on (the same rule on the eager path). Pass fused=False to "
                "skip compiling.",
                RuntimeWarning,
                stacklevel=4,
            )
            return False
        return True

    def _compiled_step(
        self, dtype: torch.dtype, device_type: str, flat: bool, length: int = 1
    ) -> Callable[..., None]:
        """The compiled :func:`~gradkit.core.compiled.group_update` for this chain's structure,
        shared with every optimizer of the process that has the same structure
        (:func:`~gradkit.core.compiled.shared_group_update`); flat groups pass one-element
        lists of flat buffers, ``fused="compile"`` per-tensor lists of ``length`` tensors."""
        if self._compiled is None:
            self._compiled = {}
        key = (dtype, device_type, self._compile_backend, flat, length)
        fn = self._compiled.get(key)
        if fn is None:
            fn = shared_group_update(
                self.transform, dtype, device_type, self._compile_backend, flat=flat,
                length=length,
            )  # fmt: skip
            self._compiled[key] = fn
        return fn

    # ------------------------------------------------------------------ state dict
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict; state tensors keep their saved dtype (bit-exact resume).

        The saved state is checked against what this optimizer's chain keeps (names and shapes)
        and refused with a ValueError saying what differs, so another optimizer's state dict is
        never half-used. A torch.optim state dict of the same rule loads (torch.optim's
        implementation switches such as ``foreach`` are dropped; a construction option it
        records, such as ``amsgrad``, must match this optimizer's), and so does a gradkit
        checkpoint written with the positional state keys of gradkit 0.1 (``"0.exp_avg"``).
        """
        state_dict = check_and_migrate_state_dict(self, state_dict)
        for i, group in enumerate(state_dict["param_groups"]):
            missing = sorted(set(self._specs) - set(group))
            if missing:
                raise ValueError(
                    f"cannot load this state dict into {type(self).__name__}: its param group {i} "
                    f"lacks the hyperparameters {missing}. It was saved by another optimizer."
                )
            try:
                validate_group(group, self._specs)
            except ValueError as err:
                raise ValueError(f"cannot load this state dict: param group {i}: {err}") from None
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
                self._complete_state(p)

    def _complete_state(self, p: Tensor) -> None:
        """Fill what a loaded state may lack: buffers that this chain allocates lazily and
        torch.optim does not save (``max_exp_avg_sq`` without amsgrad), and the step count
        (torch.optim.SGD keeps none; its buffers exist after the first step)."""
        st = self.state[p]
        missing = [k for k in self.transform.state_names() if k not in st]
        if missing:
            real = torch.view_as_real(p) if p.is_complex() else p
            fresh = self.transform.init([real.detach()])
            for k in missing:
                st[k] = fresh[k][0]
        if "step" not in st:
            st["step"] = torch.tensor(1.0, dtype=torch.float32)

    def construction_option_values(self) -> dict[str, Any]:
        """The construction options of this optimizer and their values."""
        return {"fused": self.fused, "nonfinite": self.nonfinite}
