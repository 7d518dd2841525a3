"""Differentially private gradients (DP-SGD): per-example clipping plus calibrated Gaussian noise.

For a batch ``B`` (drawn by Poisson sampling: each of the ``N`` training examples joins the batch
independently with probability ``q``), with per-example gradients ``g_i`` over the selected
parameters (all of them flattened together), clipping norm ``C`` and noise multiplier ``sigma``::

    c_i     = min(1, C / (||g_i|| + 1e-6))           # per-example clip factor
    g_tilde = (sum_{i in B} c_i g_i + N(0, (sigma C)^2 I)) / L

``L`` is the *expected* batch size ``q N`` (fixed, not ``|B|``: dividing by the realised size
would leak it). The result is written to ``.grad`` and any optimizer steps on it. The ``1e-6``
guard is Opacus's, kept so that the clipped gradient is the same as Opacus's.

The privacy of ``T`` such steps is tracked by an accountant from Opacus (``rdp``: Rényi DP of the
sampled Gaussian mechanism; ``prv``: privacy random variables; ``gdp``: Gaussian DP), which
reports ``epsilon`` for a given ``delta``. gradkit writes no accountant of its own.

Papers: "Deep Learning with Differential Privacy", Martín Abadi, Andy Chu, Ian Goodfellow,
H. Brendan McMahan, Ilya Mironov, Kunal Talwar, Li Zhang, 2016, arXiv 1607.00133 (DP-SGD and
the moments accountant); "Rényi Differential Privacy of the Sampled Gaussian Mechanism", Ilya
Mironov, Kunal Talwar, Li Zhang, 2019, arXiv 1908.10530 (the RDP accountant); "Numerical
Composition of Differential Privacy", Sivakanth Gopi, Yin Tat Lee, Lukas Wutschitz, 2021,
arXiv 2106.02848 (the PRV accountant). Two later papers build on this gradient-perturbation
step, "Sharper Utility Bounds for Differentially Private Models" (normalised gradient
perturbation, m-NGP) and "Efficient Differentially Private Fine-Tuning of LLMs via Reinforcement
Learning" (RLDP: learnt per-parameter clipping and noise); their own methods are not implemented
here (only their abstracts were read; authors and arXiv ids not checked).

Per-example gradients come from the curvature engine's ``per_example_gradients``
(``torch.func.vmap``) through :func:`gradkit.multigrad.per_example_jacobian`; memory is one
gradient copy per example of the batch. The accountant needs ``opacus`` (``pip install
opacus``); the clipping and noise do not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gradkit.errors import invalid_value

__all__ = [
    "DPGradient",
    "DPStepInfo",
    "noise_multiplier_for",
    "poisson_batch_indices",
]

_ACCOUNTANTS = ("rdp", "prv", "gdp")


def _make_accountant(name: str) -> Any:
    try:
        from opacus.accountants import create_accountant
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the privacy accountant needs opacus (pip install opacus); pass accountant=None to "
            "clip and add noise without accounting"
        ) from err
    return create_accountant(name)


def noise_multiplier_for(
    target_epsilon: float,
    target_delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
) -> float:
    """The noise multiplier ``sigma`` that reaches ``(target_epsilon, target_delta)`` after
    ``steps`` Poisson-sampled steps at ``sample_rate`` (Opacus's ``get_noise_multiplier``)."""
    if not target_epsilon > 0:
        raise invalid_value("target_epsilon", target_epsilon, "> 0")
    if not 0 < target_delta < 1:
        raise invalid_value("target_delta", target_delta, "in (0, 1)")
    if not 0 < sample_rate <= 1:
        raise invalid_value("sample_rate", sample_rate, "in (0, 1]")
    if not (isinstance(steps, int) and steps >= 1):
        raise invalid_value("steps", steps, "an int >= 1")
    if accountant not in _ACCOUNTANTS:
        raise invalid_value("accountant", accountant, f"one of {_ACCOUNTANTS}")
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=target_delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
        )
    )


def poisson_batch_indices(
    num_examples: int, sample_rate: float, generator: torch.Generator | None = None
) -> Tensor:
    """Indices of a Poisson-sampled batch: each of ``num_examples`` joins with probability
    ``sample_rate`` independently (the sampling the accountants assume). May be empty."""
    if not (isinstance(num_examples, int) and num_examples >= 1):
        raise invalid_value("num_examples", num_examples, "an int >= 1")
    if not 0 < sample_rate <= 1:
        raise invalid_value("sample_rate", sample_rate, "in (0, 1]")
    mask = torch.rand(num_examples, generator=generator) < sample_rate
    return mask.nonzero().flatten()


@dataclass(frozen=True)
class DPStepInfo:
    """What one private step did: the realised batch size, how many examples were clipped, the
    per-example gradient norms before clipping, and the noise's standard deviation on ``.grad``
    (``sigma * C / L``)."""

    batch_size: int
    num_clipped: int
    per_example_norms: Tensor
    grad_noise_std: float


class DPGradient:
    """DP-SGD's gradient: clip each example's gradient to norm ``max_grad_norm``, sum, add
    ``N(0, (noise_multiplier * max_grad_norm)^2)`` noise, divide by ``expected_batch_size``.

    Use it in place of ``loss.backward()``; any optimizer then steps on ``.grad``::

        dp = DPGradient(max_grad_norm=1.0, noise_multiplier=1.1,
                        expected_batch_size=256, sample_rate=256 / len(train_x))
        for step in range(steps):
            idx = poisson_batch_indices(len(train_x), dp.sample_rate)
            opt.zero_grad()
            dp.backward(model, nn.functional.cross_entropy, train_x[idx], train_y[idx])
            opt.step()
        dp.epsilon(delta=1e-5)

    Args:
        max_grad_norm: the clipping norm ``C`` (> 0), on each example's gradient over all the
            selected parameters together ("flat" clipping).
        noise_multiplier: ``sigma >= 0``; the noise on the summed gradient has standard
            deviation ``sigma * C`` per coordinate. ``0`` gives clipping only (no privacy).
        expected_batch_size: ``L``, the divisor (``sample_rate * N`` under Poisson sampling).
        sample_rate: ``q`` in ``(0, 1]``, for the accountant; required when ``accountant`` is set.
        accountant: ``"rdp"`` (default), ``"prv"``, ``"gdp"`` (Opacus's accountants) or ``None``.
        generator: a ``torch.Generator`` for the noise (default: torch's global generator).
            With the same generator state, the noise equals Opacus's draw for draw (parameters
            in the same order, ``secure_mode=False``).

    The noise is drawn on the summed gradient of each parameter, in parameter order, with
    ``torch.normal`` in the parameter's dtype and device. ``backward`` *adds* to ``.grad`` like
    autograd (call ``zero_grad`` first) and records one step with the accountant.
    """

    def __init__(
        self,
        max_grad_norm: float,
        noise_multiplier: float,
        *,
        expected_batch_size: float,
        sample_rate: float | None = None,
        accountant: str | None = "rdp",
        generator: torch.Generator | None = None,
    ) -> None:
        if not (isinstance(max_grad_norm, (int, float)) and max_grad_norm > 0):
            raise invalid_value("max_grad_norm", max_grad_norm, "> 0")
        if not (
            isinstance(noise_multiplier, (int, float))
            and noise_multiplier >= 0
            and math.isfinite(noise_multiplier)
        ):
            raise invalid_value("noise_multiplier", noise_multiplier, ">= 0 and finite")
        if not (isinstance(expected_batch_size, (int, float)) and expected_batch_size > 0):
            raise invalid_value("expected_batch_size", expected_batch_size, "> 0")
        if sample_rate is not None and not 0 < sample_rate <= 1:
            raise invalid_value("sample_rate", sample_rate, "in (0, 1] or None")
        if accountant is not None and accountant not in _ACCOUNTANTS:
            raise invalid_value("accountant", accountant, f"one of {_ACCOUNTANTS} or None")
        if accountant is not None and sample_rate is None:
            raise ValueError("sample_rate is required when an accountant is used")
        self.max_grad_norm = float(max_grad_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.expected_batch_size = float(expected_batch_size)
        self.sample_rate = sample_rate
        self.generator = generator
        self.accountant = None if accountant is None else _make_accountant(accountant)

    # -- the aggregator: a Jacobian (one [batch, *p.shape] tensor per parameter) -> gradients --
    def clip_factors(self, jacobian: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Per-example norms (over all parameters together) and clip factors
        ``min(1, C / (norm + 1e-6))``."""
        norms = torch.stack([j.reshape(len(j), -1).norm(2, dim=-1) for j in jacobian], dim=1)
        norms = norms.norm(2, dim=1)
        return norms, (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)

    def __call__(
        self,
        jacobian: Sequence[Tensor],
        *,
        losses: Tensor | None = None,
        params: Sequence[Tensor] | None = None,
    ) -> list[Tensor]:
        """Clip, sum, add noise, divide by ``expected_batch_size``: an aggregator for
        :func:`gradkit.multigrad.aggregate_into_grad`. Does not record an accountant step."""
        return self._aggregate(jacobian)[0]

    def _aggregate(self, jacobian: Sequence[Tensor]) -> tuple[list[Tensor], Tensor, Tensor]:
        if len(jacobian) == 0:
            raise ValueError("jacobian is empty: there are no parameters")
        b = jacobian[0].shape[0]
        if b == 0:
            norms = torch.zeros(0, dtype=jacobian[0].dtype, device=jacobian[0].device)
            factors = norms
        else:
            norms, factors = self.clip_factors(jacobian)
        std = self.noise_multiplier * self.max_grad_norm
        out = []
        for j in jacobian:
            summed = torch.einsum("i,i...", factors.to(j.dtype), j)
            if std > 0:
                summed = summed + torch.normal(
                    mean=0,
                    std=std,
                    size=summed.shape,
                    device=summed.device,
                    dtype=summed.dtype,
                    generator=self.generator,
                )
            out.append(summed / self.expected_batch_size)
        return out, norms, factors

    def backward(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        inputs: Tensor,
        targets: Tensor,
        params: Sequence[Tensor] | None = None,
    ) -> DPStepInfo:
        """One private gradient: per-example gradients of ``loss_fn(model(x_i), y_i)`` (called
        on a batch of one), clipped, summed, noised, divided; *added* to ``.grad`` of ``params``
        (default: all parameters with ``requires_grad``). Records one accountant step. An empty
        batch gives noise only (as Poisson sampling requires)."""
        from gradkit.curvature.per_example import named_params
        from gradkit.multigrad._backward import _write, per_example_jacobian

        if inputs.shape[0] == 0:
            sel = list(named_params(model, params).values())
            jac = [torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device) for p in sel]
        else:
            jac, sel = per_example_jacobian(model, loss_fn, inputs, targets, params)
        grads, norms, factors = self._aggregate(jac)
        with torch.no_grad():
            for p, g in zip(sel, grads):
                _write(p, g)
        if self.accountant is not None:
            self.accountant.step(
                noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate
            )
        return DPStepInfo(
            batch_size=int(inputs.shape[0]),
            num_clipped=int((factors < 1).sum()),
            per_example_norms=norms.detach(),
            grad_noise_std=self.noise_multiplier * self.max_grad_norm / self.expected_batch_size,
        )

    def epsilon(self, delta: float) -> float:
        """The accountant's ``epsilon`` at ``delta`` for the steps taken so far."""
        if self.accountant is None:
            raise ValueError("this DPGradient has no accountant (accountant=None)")
        if not 0 < delta < 1:
            raise invalid_value("delta", delta, "in (0, 1)")
        return float(self.accountant.get_epsilon(delta=delta))

    @property
    def steps(self) -> int:
        """Steps recorded by the accountant."""
        if self.accountant is None:
            return 0
        return sum(n for _, _, n in self.accountant.history)

    def state_dict(self) -> dict[str, Any]:
        """The accountant's history and the generator's state, for checkpoints."""
        return {
            "history": None if self.accountant is None else list(self.accountant.history),
            "generator": None if self.generator is None else self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        if self.accountant is not None and state.get("history") is not None:
            self.accountant.history = list(state["history"])
        if self.generator is not None and state.get("generator") is not None:
            self.generator.set_state(state["generator"])
