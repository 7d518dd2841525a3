"""Shared machinery of optimizers that wrap a base optimizer (SAM, GAM, XGrad).

Such a method evaluates the gradient somewhere else than at the current weights (a perturbed or a
predicted point), puts the weights back and lets an ordinary base optimizer take the step with
that gradient. :class:`WrapperOptimizer` builds the base optimizer on the *same* param-group dicts,
so learning-rate schedulers, ``zero_grad`` and per-group settings act on both; state and
``state_dict`` are the base optimizer's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from gradkit.core.hyperparams import Hyperparameter, validate_group
from gradkit.core.optimizer import ChainOptimizer

__all__ = ["WrapperOptimizer", "resolve_base_optimizer", "closure_error", "global_grad_norm"]


def closure_error(name: str, what: str) -> RuntimeError:
    """The error raised when a closure-based method is stepped without a closure."""
    return RuntimeError(
        f"{name} needs a closure: {what} Pass one that zeroes the gradients, recomputes the loss "
        "on the same batch, calls loss.backward() and returns the loss: optimizer.step(closure)"
    )


def resolve_base_optimizer(base: str | type[Optimizer]) -> type[Optimizer]:
    """A base optimizer class from a registered gradkit name or a ``torch.optim.Optimizer`` class."""
    if isinstance(base, str):
        from gradkit.optim.registry import get_info

        cls = get_info(base).cls
    elif isinstance(base, type) and issubclass(base, Optimizer):
        cls = base
    else:
        raise TypeError(
            f"base_optimizer must be a registered optimizer name or a torch.optim.Optimizer "
            f"class, got {base!r}"
        )
    if getattr(cls, "requires_closure", False):
        raise ValueError(
            f"base_optimizer {cls.__name__} needs a closure itself; choose a base that steps from "
            "the gradients alone (sgd, adam, adamw, ...)"
        )
    return cls


def global_grad_norm(tensors: Sequence[Tensor]) -> Tensor:
    """The l2 norm of all tensors together (0-dim; float64 if any tensor is, else float32)."""
    if not tensors:
        return torch.zeros(())
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    norms = torch._foreach_norm(list(tensors))
    return torch.linalg.vector_norm(torch.stack([n.to(dtype) for n in norms]))


class WrapperOptimizer(Optimizer):
    """A torch optimizer whose step is taken by a base optimizer built on the same param groups.

    Subclasses set ``wrapper_hyperparameters`` (their own per-group settings, validated like any
    gradkit hyperparameter; other keywords go to the base optimizer, construction options such
    as ``nonfinite`` included) and implement ``step``.
    """

    wrapper_hyperparameters: ClassVar[tuple[Hyperparameter, ...]] = ()
    #: the base optimizer used when none is given
    default_base: ClassVar[str] = "sgd"
    requires_closure: ClassVar[bool] = True

    @classmethod
    def declared_defaults(cls) -> dict[str, Any]:
        """The wrapper's own keywords with their defaults (the base optimizer's come on top)."""
        return {"base_optimizer": cls.default_base} | {
            h.name: h.default for h in cls.wrapper_hyperparameters
        }

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: str | type[Optimizer] = "sgd",
        **kwargs: Any,
    ) -> None:
        self._specs = {h.name: h for h in self.wrapper_hyperparameters}
        own = {name: kwargs.pop(name, spec.default) for name, spec in self._specs.items()}
        validate_group(own, self._specs)
        base_cls = resolve_base_optimizer(base_optimizer)
        if not issubclass(base_cls, ChainOptimizer):  # a torch.optim base takes no policy
            policy = kwargs.pop("nonfinite", "ignore")
            if policy != "ignore":
                raise ValueError(
                    f"nonfinite={policy!r} needs a gradkit base optimizer; "
                    f"{base_cls.__name__} has no non-finite gradient policy"
                )
        self.__dict__["_base"] = None
        super().__init__(params, own)
        # The base optimizer adds its defaults to the very same group dicts.
        self.__dict__["_base"] = base_cls(self.param_groups, **kwargs)

    # ------------------------------------------------------------------ delegation
    @property
    def base_optimizer(self) -> Optimizer:
        """The optimizer that takes the step (its param groups are this optimizer's)."""
        return self.__dict__["_base"]

    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:
        base = self.__dict__.get("_base")
        return base.param_groups if base is not None else self.__dict__["_groups"]

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        base = self.__dict__.get("_base")
        if base is not None:
            base.param_groups = value
        else:
            self.__dict__["_groups"] = value

    @property  # type: ignore[override]
    def state(self) -> Any:
        base = self.__dict__.get("_base")
        return base.state if base is not None else self.__dict__["_state"]

    @state.setter
    def state(self, value: Any) -> None:
        base = self.__dict__.get("_base")
        if base is not None:
            base.state = value
        else:
            self.__dict__["_state"] = value

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for name, spec in self._specs.items():
            param_group.setdefault(name, self.defaults.get(name, spec.default))
        validate_group(param_group, self._specs)
        base = self.__dict__.get("_base")
        if base is None:
            super().add_param_group(param_group)
        else:
            base.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict (its groups hold this optimizer's settings too)."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)

    def __getstate__(self) -> dict[str, Any]:
        # the specs hold local check functions (not picklable); they are rebuilt from the class
        return {k: v for k, v in self.__dict__.items() if k != "_specs"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._specs = {h.name: h for h in self.wrapper_hyperparameters}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_optimizer!r})"

    # ------------------------------------------------------------------ helpers
    def _with_grads(self) -> tuple[list[Tensor], list[Tensor], list[float]]:
        """Parameters that have a gradient, their gradients and the ascent sign of their group."""
        params: list[Tensor] = []
        grads: list[Tensor] = []
        signs: list[float] = []
        for group in self.param_groups:
            sign = -1.0 if group.get("maximize", False) else 1.0
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(
                        f"{type(self).__name__} does not support sparse gradients (parameter of "
                        f"shape {tuple(p.shape)})"
                    )
                params.append(p)
                grads.append(p.grad)
                signs.append(sign)
        return params, grads, signs

    @staticmethod
    def _evaluate(closure: Callable[[], Any]) -> Any:
        with torch.enable_grad():
            return closure()

    @staticmethod
    def _current_grads(params: Sequence[Tensor]) -> list[Tensor]:
        grads = []
        for p in params:
            if p.grad is None:
                raise RuntimeError(
                    "the closure left a parameter without a gradient at the perturbed point; it "
                    "must call loss.backward() on a loss that depends on every parameter stepped"
                )
            grads.append(p.grad)
        return grads
