"""Entropy-SGD: descend the local entropy, its gradient estimated by an inner Langevin loop."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from gradkit.core.hyperparams import integer, interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList, chain
from gradkit.optim._base import RecipeOptimizer
from gradkit.optim._wrapper import closure_error
from gradkit.optim.registry import register_optimizer
from gradkit.transforms.decay import l2_regularization
from gradkit.transforms.moments import Momentum
from gradkit.transforms.scaling import ScaleByLearningRate

__all__ = ["EntropySGD"]


class _LocalEntropySettings(GradientTransformation):
    """Declares (and so validates) the inner-loop hyperparameters; passes updates through."""

    hyperparameters = (
        interval("gamma", 0.03, 0.0, low_open=True),
        interval("gamma_scoping", 1e-3, 0.0),
        interval("sgld_lr", 0.1, 0.0, low_open=True),
        interval("noise", 1e-4, 0.0),
        interval("alpha", 0.75, 0.0, 1.0, low_open=True),
        integer("langevin_steps", 20, low=1),
    )

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        return updates


@register_optimizer(
    "entropy_sgd",
    paper="Entropy-SGD: Biasing Gradient Descent Into Wide Valleys",
    arxiv="1611.01838",
)
class EntropySGD(RecipeOptimizer):
    """Entropy-SGD (Chaudhari et al., Algorithm 1).

     Each step runs ``L = langevin_steps`` steps of stochastic gradient Langevin dynamics around
     the current weights ``x`` (one closure call each; the first reuses the gradient at ``x``),
     then moves ``x`` towards their running average ``mu``::

         x', mu <- x
         for l in 1..L:
             dx' = grad f(x') - gamma_t (x - x')
             x'  <- x' - sgld_lr * dx' + sqrt(sgld_lr) * noise * N(0, I)
             mu  <- (1 - alpha) mu + alpha x'
         x <- x - lr * gamma_t (x - mu)        # the gradient of the negative local entropy

     with the scope ``gamma_t = gamma (1 + gamma_scoping)^t`` (``t`` = steps taken). The outer
     step is a chain ``l2_regularization -> Momentum -> ScaleByLearningRate`` fed with
     ``gamma_t (x - mu)``, so ``momentum``/``nesterov``/``weight_decay`` work as in SGD (all 0
     by default: the algorithm box). After the step ``.grad`` holds ``gamma_t (x - mu)``.
     ``seed`` fixes the Langevin noise (a private generator, saved in ``state_dict``).

     Chaudhari, Choromanska, Soatto, LeCun, Baldassi, Borgs, Chayes, Sagun, Zecchina,
     "Entropy-SGD: Biasing Gradient Descent Into Wide Valleys", ICLR 2017, arXiv 1611.01838
    . Defaults from the paper: ``L = 20``, ``sgld_lr = 0.1``, ``noise = 1e-4``,
     ``alpha = 0.75``, ``gamma = 0.03``, ``gamma_scoping = 1e-3``, ``lr = 1``.
    """

    hyperparameters = {
        "lr": 1.0,
        "momentum": 0.0,
        "dampening": 0.0,
        "nesterov": False,
        "weight_decay": 0.0,
        "gamma": 0.03,
        "gamma_scoping": 1e-3,
        "sgld_lr": 0.1,
        "noise": 1e-4,
        "alpha": 0.75,
        "langevin_steps": 20,
    }
    #: ``seed`` fixes the Langevin noise (a private generator, saved in ``state_dict``)
    options = (integer("seed", None, allow_none=True),)
    requires_closure = True

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._seed = self.options["seed"]
        self._generator: torch.Generator | None = None

    def recipe(self, *, seed: int | None) -> GradientTransformation:
        return chain(
            _LocalEntropySettings(), l2_regularization(), Momentum(), ScaleByLearningRate()
        )

    # ------------------------------------------------------------------ noise
    def _noise_like(self, p: Tensor) -> Tensor:
        if self._seed is None:
            return torch.randn_like(p)
        if self._generator is None:
            self._generator = torch.Generator(device=p.device).manual_seed(self._seed)
        return torch.randn(p.shape, generator=self._generator, device=p.device, dtype=p.dtype)

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        if self._generator is not None:
            out["entropy_sgd_generator"] = self._generator.get_state()
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        rng = state_dict.pop("entropy_sgd_generator", None)
        super().load_state_dict(state_dict)
        if rng is not None and self._seed is not None:
            first = self.param_groups[0]["params"][0]
            self._generator = torch.Generator(device=first.device)
            self._generator.set_state(rng)

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """``langevin_steps`` closure calls around ``x``, then one outer step of every group."""
        if closure is None:
            raise closure_error(
                "EntropySGD", "its inner Langevin loop evaluates the gradient at new points."
            )
        steps = {g["langevin_steps"] for g in self.param_groups}
        if len(steps) > 1:
            raise ValueError("EntropySGD needs the same langevin_steps in every param group")
        with torch.enable_grad():
            loss = closure()
        members = [(g, p) for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not members:
            return loss
        params = [p for _, p in members]
        anchors = [p.clone() for p in params]
        mu = [p.clone() for p in params]
        gammas = []
        for g, p in members:
            st = self.state.get(p)
            t = int(st["step"].item()) if st and "step" in st else 0
            gammas.append(g["gamma"] * (1 + g["gamma_scoping"]) ** t)
        for i in range(steps.pop()):
            if i > 0:
                with torch.enable_grad():
                    closure()
            for (g, p), x, m, gam in zip(members, anchors, mu, gammas):
                if p.grad is None:
                    raise RuntimeError("the closure left a parameter without a gradient")
                grad = -p.grad if g["maximize"] else p.grad
                dx = grad + gam * (p - x)
                p.add_(dx, alpha=-g["sgld_lr"])
                if g["noise"] > 0:
                    p.add_(self._noise_like(p), alpha=math.sqrt(g["sgld_lr"]) * g["noise"])
                m.mul_(1 - g["alpha"]).add_(p, alpha=g["alpha"])
        for (g, p), x, m, gam in zip(members, anchors, mu, gammas):
            p.copy_(x)
            direction = (x - m).mul_(gam)
            p.grad = direction.neg_() if g["maximize"] else direction
        self._step_groups(closure, loss)
        return loss
