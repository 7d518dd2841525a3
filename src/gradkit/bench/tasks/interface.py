"""The task plug-in interface of ``gradkit compare``: what a task is (no task lives here).

A :class:`Task` says what to train (a model builder), on what (a :class:`TaskData`), how the
result is scored (metric, direction, target) and how much budget it gets by default. Register a
task with :func:`gradkit.bench.register_task` and it becomes available to ``gradkit compare --task NAME``
(``--plugin my_module`` imports a module that registers tasks). For classification on tensors,
:func:`gradkit.bench.classification_task` builds a task in a few lines.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["Task", "TaskData"]


@runtime_checkable
class TaskData(Protocol):
    """Data of a task, already on its device.

    ``sample_batch`` draws one training batch with the given generator (the harness seeds it, so
    every optimizer sees the same batches for the same seed); ``loss`` returns the scalar training
    loss of a model on a batch; ``evaluate`` returns the validation metric of a model. Data may
    also have ``signature() -> str`` (a digest of the data) for the task's fingerprint.
    """

    def sample_batch(self, generator: torch.Generator, batch_size: int) -> Any: ...

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module) -> float: ...


# Optional for TaskData: ``signature() -> str``, a digest of the data (e.g. a hash of the
# tensors); without it, the task fingerprint hashes the first training batches.


@dataclass
class Task:
    """A training task for ``gradkit compare``.

    Attributes:
        name: the name used on the command line.
        description: one line shown by ``gradkit compare --list-tasks`` and in the report.
        metric: name of the validation metric (e.g. ``"accuracy"``, ``"bits per char"``).
        higher_is_better: direction of the metric.
        target: the metric value that counts as reached, for steps/time to target.
        build_model: returns a freshly initialised model (the harness seeds torch first).
        load_data: ``load_data(device) -> TaskData``; called once per process and device.
        steps: default number of optimizer steps per run.
        batch_size: training batch size.
        eval_every: evaluate the validation metric every this many steps.
        trials: default number of tuning trials per optimizer.
        seeds: default number of seeds per configuration.
        lr_factors: the learning rate is searched (log scale) in
            ``[low * centre, high * centre]`` where ``centre`` is the middle of each
            optimizer's well-tuned range (``gradkit.bench.protocol.optimizers.search_centre``),
            so every optimizer gets an interval of the same width centred where it trains well.
        chance: the metric of a model that has learnt nothing (e.g. 0.1 for accuracy on 10
            balanced classes), or None; the report flags a grid whose points mostly end there.
        references: named reference values of the metric, drawn as lines in the report.
        worst: the metric value recorded for a diverged run (NaN or infinite loss).
        version: the task definition's version; change it when the task changes in a way
            its fingerprint cannot see (the loss function, data preprocessing inside
            ``loss``), so that old studies are not reused. The model's structure, the data and
            the scoring are fingerprinted anyway (:mod:`gradkit.bench.tasks.fingerprint`).
    """

    name: str
    description: str
    metric: str
    higher_is_better: bool
    target: float
    build_model: Callable[[], nn.Module]
    load_data: Callable[[torch.device], TaskData]
    steps: int = 1000
    batch_size: int = 100
    eval_every: int = 100
    trials: int = 4
    seeds: int = 2
    lr_factors: tuple[float, float] = (0.1, 10.0)
    references: dict[str, float] = field(default_factory=dict)
    worst: float | None = None
    version: str = "1"
    chance: float | None = None

    def __post_init__(self) -> None:
        if self.worst is None:
            self.worst = 0.0 if self.higher_is_better else math.inf
        low, high = self.lr_factors
        if not 0 < low <= high:
            raise ValueError(f"lr_factors must satisfy 0 < low <= high, got {self.lr_factors}")

    def better(self, a: float, b: float) -> bool:
        """True if metric value ``a`` is strictly better than ``b``."""
        return a > b if self.higher_is_better else a < b

    def reached(self, value: float) -> bool:
        """True if ``value`` reaches the target."""
        return value >= self.target if self.higher_is_better else value <= self.target
