"""Multi-task classification: one shared trunk, one head and one label per task.

A multi-task task's data has several losses (:meth:`MultiTaskData.task_losses`), so
``gradkit compare`` trains it with a :mod:`gradkit.multigrad` aggregator per arm
(``--aggregator sum,pcgrad,upgrad``) and reports each task's accuracy next to the objective, the
mean of the tasks' accuracies. The model is a :class:`MultiHeadNet`: ``trunk`` (shared by all
tasks) and ``heads`` (one per task); it returns one output per task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from gradkit.bench.tasks.interface import Task

__all__ = ["MultiHeadNet", "MultiTaskData", "multitask_classification_task"]


class MultiHeadNet(nn.Module):
    """``trunk`` shared by every task, then one head per task; ``forward`` returns a tuple of
    the heads' outputs."""

    def __init__(self, trunk: nn.Module, heads: Sequence[nn.Module]) -> None:
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleList(heads)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # noqa: D102
        h = self.trunk(x)
        return tuple(head(h) for head in self.heads)


class MultiTaskData:
    """Inputs and one label tensor per task, on one device; cross-entropy per task; accuracy
    per task, the objective being their mean.

    Batches are ``(inputs, (labels_1, ..., labels_k))``.
    """

    def __init__(
        self,
        names: Sequence[str],
        x_train: torch.Tensor,
        ys_train: Sequence[torch.Tensor],
        x_val: torch.Tensor,
        ys_val: Sequence[torch.Tensor],
        device: torch.device | str = "cpu",
    ) -> None:
        if not len(names) == len(ys_train) == len(ys_val) >= 2:
            raise ValueError("a multi-task task needs two or more tasks, with labels for each")
        self.names = list(names)
        self.x_train = x_train.to(device)
        self.ys_train = [y.to(device).long() for y in ys_train]
        self.x_val = x_val.to(device)
        self.ys_val = [y.to(device).long() for y in ys_val]

    def signature(self) -> str:
        """SHA-1 of the tensors (for the task fingerprint)."""
        from gradkit.bench.tasks.fingerprint import hash_data

        return hash_data(self.x_train, *self.ys_train, self.x_val, *self.ys_val)

    def sample_batch(self, generator: torch.Generator, batch_size: int) -> Any:
        idx = torch.randint(0, len(self.x_train), (batch_size,), generator=generator)
        idx = idx.to(self.x_train.device)
        return self.x_train[idx], tuple(y[idx] for y in self.ys_train)

    def task_losses(self, model: nn.Module, batch: Any) -> list[torch.Tensor]:
        """One cross-entropy per task, from one forward pass."""
        x, ys = batch
        return [F.cross_entropy(out, y) for out, y in zip(model(x), ys)]

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The sum of the tasks' losses."""
        return torch.stack(self.task_losses(model, batch)).sum()

    def shared_parameters(self, model: MultiHeadNet) -> list[nn.Parameter]:
        """The trunk's parameters (every task reaches them)."""
        return list(model.trunk.parameters())

    def last_shared_layer(self, model: MultiHeadNet) -> list[nn.Parameter]:
        """The parameters of the trunk's last module with parameters (GradNorm's layer)."""
        last = [m for m in model.trunk.modules() if any(True for _ in m.parameters(False))][-1]
        return list(last.parameters(recurse=False))

    @torch.no_grad()
    def evaluate_tasks(self, model: nn.Module) -> dict[str, float]:
        """Validation accuracy of each task."""
        outs = model(self.x_val)
        return {
            f"{name} accuracy": float((out.argmax(-1) == y).float().mean())
            for name, out, y in zip(self.names, outs, self.ys_val)
        }

    def evaluate(self, model: nn.Module) -> float:
        """The mean of the tasks' validation accuracies."""
        accs = self.evaluate_tasks(model)
        return sum(accs.values()) / len(accs)


def multitask_classification_task(
    name: str,
    build_model: Callable[[], nn.Module],
    load: Callable[[], tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, list[torch.Tensor]]],
    *,
    tasks: Sequence[str],
    target: float,
    description: str = "",
    **task_fields: Any,
) -> Task:
    """A :class:`Task` training ``build_model()`` (a :class:`MultiHeadNet`) on ``load()``'s
    ``(x_train, [labels per task], x_val, [labels per task])``; metric: mean accuracy."""
    cache: dict[str, MultiTaskData] = {}

    def load_data(device: torch.device) -> MultiTaskData:
        key = str(device)
        if key not in cache:
            x, ys, xv, ysv = load()
            cache[key] = MultiTaskData(tasks, x, ys, xv, ysv, device=device)
        return cache[key]

    return Task(
        name=name,
        description=description or f"multi-task classification: {name}",
        metric="mean accuracy",
        higher_is_better=True,
        target=target,
        build_model=build_model,
        load_data=load_data,
        **task_fields,
    )
