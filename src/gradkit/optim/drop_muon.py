"""Drop-Muon: Muon that updates a random subset of the hidden layers at each step.

At step k a subset ``S_k`` of the Muon-updated matrices (in model order, input side first) is
drawn; only those take Muon's step, the others keep their weights and momentum unchanged (their
step counters do not advance). AdamW parameters are updated every step. Schedules:

- ``"progressive"`` (Randomized Progressive Training, the paper's default): draw a start index
  ``s`` uniformly from ``{0, ..., b-1}`` and update ``S = {s, ..., b-1}``: the layers nearest the
  output are updated most often (backpropagation reaches them first, so a truncated backward pass
  can skip the rest: gradkit leaves that to the training loop).
- ``"uniform"``: each matrix independently with probability ``keep_prob`` (at least one).

Gruntkowska, Maziane, Qu & Richtarik, "Drop-Muon: Update Less, Converge Faster", arXiv
2510.02239. ``seed`` makes the draws reproducible; the generator's state is saved in
``state_dict()`` under ``"drop_rng"``. ``schedule``, ``keep_prob`` and ``seed`` are construction
options (fixed for the optimizer, never in param groups). ``nonfinite="skip"`` / ``"raise"``
look at every gradient of a Muon group, sampled or not; with ``"ignore"`` a NaN gradient of an
unsampled matrix is never used.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradkit.core.hyperparams import choice, integer, interval
from gradkit.core.optimizer import gradients_are_finite, nonfinite_error
from gradkit.optim.muon import Muon
from gradkit.optim.registry import register_optimizer

__all__ = ["DropMuon"]

_SCHEDULES = ("progressive", "uniform")


@register_optimizer(
    "drop_muon",
    paper="Drop-Muon: Update Less, Converge Faster",
    arxiv="2510.02239",
)
class DropMuon(Muon):
    """Muon on a random subset of the hidden matrices per step (see module docstring).

    Group hyperparameters: those of ``muon``. Construction options: those of ``muon`` plus
    ``schedule`` ("progressive" | "uniform"), ``keep_prob`` (in (0, 1], uniform schedule) and
    ``seed`` (int or None). After each step ``last_sampled`` holds the indices (into the list of
    Muon parameters) that were updated.
    """

    options = (
        *Muon.options,
        choice("schedule", "progressive", _SCHEDULES),
        interval("keep_prob", 0.5, 0.0, 1.0, low_open=True),
        integer("seed", None, allow_none=True),
    )

    def __init__(self, params: Any, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._schedule = self.options["schedule"]
        self._keep_prob = float(self.options["keep_prob"])
        self._rng = torch.Generator()
        seed = self.options["seed"]
        if seed is None:
            self._rng.seed()
        else:
            self._rng.manual_seed(seed)
        self._active: set[int] = set()
        self.last_sampled: list[int] = []

    def _matrix_params(self) -> list[Tensor]:
        return [p for g in self.param_groups if g["use_muon"] for p in g["params"]]

    def sample(self) -> list[int]:
        """Draw the indices of the matrices to update this step."""
        b = len(self._matrix_params())
        if b == 0:
            return []
        if self._schedule == "progressive":
            s = int(torch.randint(0, b, (1,), generator=self._rng))
            return list(range(s, b))
        keep = torch.rand(b, generator=self._rng) < self._keep_prob
        if not keep.any():
            keep[int(torch.randint(0, b, (1,), generator=self._rng))] = True
        return [i for i in range(b) if keep[i]]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        mats = self._matrix_params()
        self.last_sampled = self.sample()
        self._active = {id(mats[i]) for i in self.last_sampled}
        if self.nonfinite != "ignore" and closure is None:
            # the policy sees the whole group, sampled or not (an unsampled NaN is still news)
            for g in self.param_groups:
                grads = [p.grad for p in g["params"] if g["use_muon"] and p.grad is not None]
                if grads and not gradients_are_finite(grads):
                    if self.nonfinite == "raise":
                        raise nonfinite_error(grads)
                    self._active -= {id(p) for p in g["params"]}
        return super().step(closure)

    def _gather(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        params, grads, owners = super()._gather(group)
        if not group["use_muon"]:
            return params, grads, owners
        keep = [i for i, p in enumerate(owners) if id(p) in self._active]
        return [params[i] for i in keep], [grads[i] for i in keep], [owners[i] for i in keep]

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out["drop_rng"] = self._rng.get_state()
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        rng = state_dict.pop("drop_rng", None)
        super().load_state_dict(state_dict)
        if rng is not None:
            self._rng.set_state(rng)
