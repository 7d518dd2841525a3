"""Base class of named optimizers: one declaration of settings, a recipe (a chain) from it.

A named optimizer declares its settings once, in two kinds (see :mod:`gradkit.core.hyperparams`):

``hyperparameters``
    group hyperparameters with this optimizer's defaults: ``{"lr": 1e-3, ...}`` (a value) or
    ``{"lr": interval("lr", 0.1, 0, low_open=True)}`` (a narrower specification than the
    transform's). Their specifications come from the transforms of the chain; every
    hyperparameter the chain reads is a keyword of the optimizer, with the transform's default
    where the optimizer gives none.
``options``
    construction options (specifications): validated once, passed to :meth:`recipe` as keywords,
    never copied into param groups or the state dict. Every named optimizer also takes ``fused``
    and ``nonfinite`` (see :class:`~gradkit.core.optimizer.ChainOptimizer`).

From this one declaration come the defaults, the chain, the signature that ``help()`` and
``inspect.signature`` show, and the invalid values the contract test tries.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from torch import Tensor

from gradkit.core.hyperparams import Hyperparameter
from gradkit.core.optimizer import FUSED, MAXIMIZE, NONFINITE, ChainOptimizer
from gradkit.core.transform import Chain, GradientTransformation

__all__ = ["RecipeOptimizer"]

_CORE_OPTIONS: tuple[Hyperparameter, ...] = (FUSED, NONFINITE)


class _DeclaredSignature:
    """``cls.__signature__``, computed from the class's declaration when first asked for."""

    def __get__(self, obj: Any, cls: type) -> inspect.Signature | None:
        try:
            settings = {**cls.group_specs(), **cls.option_specs()}
        except NotImplementedError:  # a base class without a recipe: inspect looks further
            return None
        params = [inspect.Parameter("params", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        kw = inspect.Parameter.KEYWORD_ONLY
        for name, spec in settings.items():
            params.append(inspect.Parameter(name, kw, default=spec.default))
        return inspect.Signature(params)


class RecipeOptimizer(ChainOptimizer):
    """A named optimizer: subclasses declare ``hyperparameters`` and ``options`` and define
    ``recipe(**options)``, which returns the chain (see the module docstring)."""

    #: group hyperparameters: this optimizer's defaults (values, or narrower specifications)
    hyperparameters: ClassVar[Mapping[str, Any]] = {}
    #: construction options (specifications), passed to ``recipe``
    options: ClassVar[tuple[Hyperparameter, ...]] = ()
    #: True if ``recipe`` takes ``fused`` itself (an own fast path), so the generic flat path
    #: does not apply
    recipe_takes_fused: ClassVar[bool] = False
    requires_closure: ClassVar[bool] = False

    __signature__ = _DeclaredSignature()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "default_hyperparameters" in cls.__dict__:
            raise TypeError(
                f"{cls.__name__} defines default_hyperparameters, which gradkit 0.2 replaced: "
                "declare group hyperparameters in `hyperparameters = {name: default}` and "
                "structural settings in `options = (choice(...), flag(...), ...)`, which "
                "`recipe(self, *, option, ...)` receives (see docs/transforms.md)"
            )

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], **kwargs: Any):
        cls = type(self)
        option_specs = cls.option_specs()
        options = {name: kwargs.pop(name, spec.default) for name, spec in option_specs.items()}
        for name, spec in option_specs.items():
            spec.validate(options[name])
        transform = self._build(options)
        specs = cls._group_specs_of(transform)
        unknown = sorted(set(kwargs) - set(specs))
        unused = [n for n in unknown if n in cls.hyperparameters]
        if unused:  # declared, but the chain these options build never reads it
            own = {spec.name for spec in cls.options}
            chosen = ", ".join(f"{k}={v!r}" for k, v in options.items() if k in own)
            raise TypeError(
                f"{cls.__name__} with {chosen} does not use {unused}: leave them out (a setting "
                "that is accepted must change the update)"
            )
        if unknown:
            raise TypeError(
                f"{cls.__name__} got unknown hyperparameter(s) or option(s) {unknown}; it takes: "
                f"{', '.join([*specs, *option_specs])}"
            )
        self.options: dict[str, Any] = options
        self.construction_options = frozenset(option_specs)
        super().__init__(
            params,
            transform,
            kwargs,
            fused=False if cls.recipe_takes_fused else options["fused"],
            nonfinite=options["nonfinite"],
            specs=specs,
        )

    # ------------------------------------------------------------------ the declaration
    @classmethod
    def option_specs(cls) -> dict[str, Hyperparameter]:
        """Construction options: the class's own, then ``fused`` and ``nonfinite``."""
        return {spec.name: spec for spec in (*cls.options, *_CORE_OPTIONS)}

    @classmethod
    def group_specs(cls) -> dict[str, Hyperparameter]:
        """Group hyperparameters with this optimizer's defaults (chain built with default
        options)."""
        defaults = {name: spec.default for name, spec in cls.option_specs().items()}
        return cls._group_specs_of(cls._build_for(defaults))

    @classmethod
    def declared_defaults(cls) -> dict[str, Any]:
        """Every keyword argument with its default: group hyperparameters, then options."""
        return {
            name: spec.default for name, spec in {**cls.group_specs(), **cls.option_specs()}.items()
        }

    @classmethod
    def _group_specs_of(cls, transform: GradientTransformation) -> dict[str, Hyperparameter]:
        chain = transform if isinstance(transform, Chain) else Chain(transform)
        from_chain = chain.specs()
        # the declared ones first, in declaration order (the signature's order), then the rest
        specs = {n: from_chain[n] for n in cls.hyperparameters if n in from_chain}
        specs.update(from_chain)
        specs.setdefault("maximize", MAXIMIZE)
        for name, value in cls.hyperparameters.items():
            if isinstance(value, Hyperparameter):
                specs[name] = value
            elif name in specs:  # (a default for a stage that these options leave out is unused)
                specs[name] = _with_default(specs[name], value)
        return specs

    @classmethod
    def _build_for(cls, options: Mapping[str, Any]) -> GradientTransformation:
        blank = cls.__new__(cls)  # a recipe reads the options, never the optimizer's state
        return blank._build(options)

    def _build(self, options: Mapping[str, Any]) -> GradientTransformation:
        given = {k: v for k, v in options.items() if k not in ("fused", "nonfinite")}
        if self.recipe_takes_fused:
            given["fused"] = options["fused"]
        return self.recipe(**given)

    def recipe(self, **options: Any) -> GradientTransformation:
        """The chain of transforms, built from the construction options."""
        raise NotImplementedError

    def construction_option_values(self) -> dict[str, Any]:
        return dict(self.options)


def _with_default(spec: Hyperparameter, default: Any) -> Hyperparameter:
    """``spec`` with another default (specifications are frozen: a changed copy)."""
    new = copy.copy(spec)
    object.__setattr__(new, "default", default)
    return new
