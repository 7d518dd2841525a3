"""Training diagnostics as optional callbacks of the comparison's training loop.

:func:`gradkit.bench.train.train_run` accepts ``callbacks``: objects following
:class:`TrainCallback`. After every ``callback.every``-th optimizer step the loop calls
``callback(info)`` with a :class:`StepInfo` (step count, model, optimizer, current learning
rate, the run's fixed diagnostic batch and the task's loss); at the end of the run the
callback's :meth:`~TrainCallback.records` go into ``RunResult.diagnostics[callback.name]``, a
JSON-serialisable list of dicts stored with the trial like the curves. Callback time is not
counted in the run's training time.

The built-in diagnostics (``gradkit compare --diagnose NAME``):

* ``sharpness``: the top Hessian eigenvalue of the training loss on the fixed batch (Lanczos,
  :class:`gradkit.diagnostics.sharpness.SharpnessTracker`), recorded next to the stability edge
  ``2 / lr`` with ``lr`` the learning rate of the first parameter group used by that step.
* ``subspace``: the fraction of the gradient (on the fixed batch) inside the top-``k``
  Hessian eigenspace, and the overlap of that subspace with the first and the previous
  measurement (:class:`gradkit.diagnostics.subspace.SubspaceTracker`).

Both work on any task: the task's own ``loss(model, batch)`` is wrapped into the
``(model, loss_fn, data)`` form of the curvature engine, so the batch may be anything the task
samples (pairs of tensors, token windows, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from gradkit.bench.tasks.interface import TaskData

__all__ = [
    "DIAGNOSTICS",
    "SharpnessCallback",
    "StepInfo",
    "SubspaceCallback",
    "TrainCallback",
    "make_callbacks",
]

#: Diagnostics ``gradkit compare --diagnose`` accepts, with what each records.
DIAGNOSTICS: dict[str, str] = {
    "sharpness": "top Hessian eigenvalue of the training loss on a fixed batch, next to 2/lr",
    "subspace": "fraction of the gradient in the top-10 Hessian eigenspace, and its drift",
}


@dataclass
class StepInfo:
    """What a callback gets after an optimizer step.

    Attributes:
        step: optimizer steps done so far (1 after the first step).
        model: the model being trained (in training mode; callbacks must leave it so).
        optimizer: the optimizer.
        lr: learning rate of the first parameter group used by this step (schedule applied).
        data: the task's data (``data.loss(model, batch)`` is the training loss).
        fixed_batch: returns the run's fixed diagnostic batch, the same object at every call
            (drawn on first use from its own generator, so training batches are unaffected).
    """

    step: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    lr: float
    data: TaskData
    fixed_batch: Callable[[], Any]

    def loss(self, batch: Any) -> Tensor:
        """The task's training loss of the model on ``batch`` (with a graph)."""
        return self.data.loss(self.model, batch)


@runtime_checkable
class TrainCallback(Protocol):
    """A training-loop callback for :func:`gradkit.bench.train.train_run`.

    ``name`` keys its records in ``RunResult.diagnostics``; it is called after every
    ``every``-th step. A callback instance may be reused for several runs: it must start a
    fresh history when it sees a new model.
    """

    name: str
    every: int

    def __call__(self, info: StepInfo) -> None: ...

    def records(self) -> list[dict[str, Any]]:
        """JSON-serialisable records of the current run (non-finite numbers as ``None``)."""
        ...


class _BatchLoss(nn.Module):
    """``forward(anything) = data.loss(model, batch)``: a task loss in curvature-engine form.

    With ``loss_fn = lambda out, _: out`` and a dummy ``(inputs, targets)`` pair, the curvature
    operators differentiate the task's own loss on ``batch`` with respect to ``model``'s
    parameters (the wrapper has no parameters of its own).
    """

    def __init__(self, model: nn.Module, data: TaskData, batch: Any) -> None:
        super().__init__()
        self.model = model
        self.task_data = data
        self.batch = batch

    def forward(self, _inputs: Tensor) -> Tensor:
        return self.task_data.loss(self.model, self.batch)


def _identity_loss(outputs: Tensor, _targets: Tensor) -> Tensor:
    return outputs


def _dummy_pair(model: nn.Module) -> tuple[Tensor, Tensor]:
    device = next(model.parameters()).device
    return torch.zeros(1, 1, device=device), torch.zeros(1, 1, device=device)


def _finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _params_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)


class _ModelBound:
    """Shared plumbing: (re)build the wrapped loss and tracker when a new run starts."""

    name = ""

    def __init__(self, every: int) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every}")
        self.every = every
        self._model: nn.Module | None = None
        self._records: list[dict[str, Any]] = []
        self._tracker: Any = None
        self._wrapped: nn.Module | None = None
        self._pair: tuple[Tensor, Tensor] | None = None

    def _bind(self, info: StepInfo) -> None:
        if info.model is self._model:
            return
        self._model = info.model
        self._records = []
        self._wrapped = _BatchLoss(info.model, info.data, info.fixed_batch())
        self._wrapped.training = info.model.training  # eval-mode measurements restore it
        self._pair = _dummy_pair(info.model)
        self._reset_tracker()

    def _reset_tracker(self) -> None:
        """A fresh tracker (after a failed measurement: no warm start from garbage)."""
        self._tracker = self._make_tracker(self._wrapped, self._pair)

    def _make_tracker(self, wrapped: nn.Module, data: tuple[Tensor, Tensor]) -> Any:
        raise NotImplementedError

    def records(self) -> list[dict[str, Any]]:
        """The records of the current run."""
        return list(self._records)


class SharpnessCallback(_ModelBound):
    """Top Hessian eigenvalue on the fixed batch every ``every`` steps, next to ``2 / lr``.

    The model is measured in eval mode (no dropout, batch-norm running statistics used and left
    untouched), so measuring does not change the training.

    Records ``{"step", "sharpness", "lr", "threshold", "num_matvecs"}`` (``threshold = 2/lr``).
    Lanczos is warm-started from the previous top eigenvector; ``tol`` and ``max_iter`` are its
    stopping rule (see :class:`gradkit.diagnostics.sharpness.SharpnessTracker`). When the
    parameters or the curvature are no longer finite (a diverging run) the record holds
    ``None``.
    """

    name = "sharpness"

    def __init__(self, every: int, *, tol: float = 1e-3, max_iter: int = 100) -> None:
        super().__init__(every)
        self.tol, self.max_iter = tol, max_iter

    def _make_tracker(self, wrapped: nn.Module, data: tuple[Tensor, Tensor]) -> Any:
        from gradkit.diagnostics.sharpness import SharpnessTracker

        return SharpnessTracker(
            wrapped, _identity_loss, data, every=1, tol=self.tol, max_iter=self.max_iter
        )

    def __call__(self, info: StepInfo) -> None:
        """Measure the sharpness at ``info.step``."""
        self._bind(info)
        lr = float(info.lr)
        threshold = 2.0 / lr if lr > 0 else None
        rec: dict[str, Any] = {"step": info.step, "sharpness": None, "lr": lr}
        rec["threshold"], rec["num_matvecs"] = threshold, 0
        if _params_finite(info.model):
            try:
                r = self._tracker.measure(info.step)
            except torch.linalg.LinAlgError:  # non-finite curvature on a diverging run
                r = None
            if r is not None and math.isfinite(r.sharpness):
                rec["sharpness"], rec["num_matvecs"] = r.sharpness, r.num_matvecs
            else:
                self._reset_tracker()
        self._records.append(rec)


class SubspaceCallback(_ModelBound):
    """Gradient fraction in the top-``k`` Hessian eigenspace on the fixed batch (eval mode).

    Records ``{"step", "fraction", "eigenvalues", "overlap_with_reference",
    "overlap_with_previous", "num_matvecs"}``; the reference subspace is the first
    measurement's. ``k`` is capped at the number of parameters.
    """

    name = "subspace"

    def __init__(self, every: int, *, k: int = 10, tol: float = 1e-3, max_iter: int = 200) -> None:
        super().__init__(every)
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k}")
        self.k, self.tol, self.max_iter = k, tol, max_iter

    def _make_tracker(self, wrapped: nn.Module, data: tuple[Tensor, Tensor]) -> Any:
        from gradkit.diagnostics.subspace import SubspaceTracker

        dim = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
        return SubspaceTracker(
            wrapped,
            _identity_loss,
            data,
            k=min(self.k, dim),
            every=1,
            tol=self.tol,
            max_iter=self.max_iter,
        )

    def __call__(self, info: StepInfo) -> None:
        """Measure the gradient fraction and the subspace overlaps at ``info.step``."""
        self._bind(info)
        rec: dict[str, Any] = {
            "step": info.step,
            "fraction": None,
            "eigenvalues": [],
            "overlap_with_reference": None,
            "overlap_with_previous": None,
            "num_matvecs": 0,
        }
        if _params_finite(info.model):
            # eval mode, as for the sharpness: no dropout draws, no batch-norm statistics updates
            was_training = info.model.training
            info.model.eval()
            try:
                s = self._tracker.measure(info.step)
            except (ValueError, torch.linalg.LinAlgError):
                # a zero gradient (fraction undefined), or non-finite curvature (diverging run)
                s = None
                self._reset_tracker()
            finally:
                info.model.train(was_training)
            if s is not None:
                rec["fraction"] = _finite_or_none(s.fraction)
                rec["eigenvalues"] = [_finite_or_none(v) for v in s.eigenvalues]
                rec["overlap_with_reference"] = _finite_or_none(s.overlap_with_reference)
                rec["overlap_with_previous"] = _finite_or_none(s.overlap_with_previous)
                rec["num_matvecs"] = s.num_matvecs
        self._records.append(rec)


_FACTORIES: dict[str, Callable[[int], TrainCallback]] = {
    "sharpness": SharpnessCallback,
    "subspace": SubspaceCallback,
}


def make_callbacks(names: Sequence[str], every: int) -> list[TrainCallback]:
    """Fresh callbacks for the diagnostics ``names`` (keys of :data:`DIAGNOSTICS`)."""
    unknown = [n for n in names if n not in _FACTORIES]
    if unknown:
        raise ValueError(
            f"unknown diagnostic {', '.join(map(repr, unknown))}; "
            f"choose from: {', '.join(DIAGNOSTICS)}"
        )
    return [_FACTORIES[n](every) for n in dict.fromkeys(names)]
