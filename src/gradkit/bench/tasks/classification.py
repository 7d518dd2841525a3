"""Classification tasks on in-memory tensors: the few-lines way to add a task.

Example::

    from torch import nn
    from gradkit.bench import classification_task, register_task

    register_task(classification_task(
        "my-mlp", lambda: nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3)),
        load=lambda: (x_train, y_train, x_val, y_val), target=0.9, steps=500))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from gradkit.bench.tasks.interface import Task

__all__ = ["ClassificationData", "classification_task"]

Tensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class ClassificationData:
    """Train/validation tensors on one device; cross-entropy loss; accuracy as the metric."""

    def __init__(
        self,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        x_val: torch.Tensor,
        y_val: torch.Tensor,
        device: torch.device | str = "cpu",
        eval_batch: int = 2048,
    ) -> None:
        if len(x_train) != len(y_train) or len(x_val) != len(y_val):
            raise ValueError("inputs and labels must have the same length")
        if len(x_train) == 0 or len(x_val) == 0:
            raise ValueError("training and validation sets must not be empty")
        self.x_train = x_train.to(device)
        self.y_train = y_train.to(device).long()
        self.x_val = x_val.to(device)
        self.y_val = y_val.to(device).long()
        self.eval_batch = eval_batch

    def signature(self) -> str:
        """SHA-1 of the four tensors (for the task fingerprint)."""
        from gradkit.bench.tasks.fingerprint import hash_data

        return hash_data(self.x_train, self.y_train, self.x_val, self.y_val)

    def sample_batch(self, generator: torch.Generator, batch_size: int) -> Any:
        idx = torch.randint(0, len(self.x_train), (batch_size,), generator=generator)
        idx = idx.to(self.x_train.device)
        return self.x_train[idx], self.y_train[idx]

    @staticmethod
    def loss_fn(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the model's output: what a gradient source differentiates
        (``gradkit compare --source``; batches are ``(inputs, targets)``)."""
        return F.cross_entropy(output, targets)

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> float:
        correct = 0
        for i in range(0, len(self.x_val), self.eval_batch):
            logits = model(self.x_val[i : i + self.eval_batch])
            correct += int((logits.argmax(-1) == self.y_val[i : i + self.eval_batch]).sum())
        return correct / len(self.x_val)


def classification_task(
    name: str,
    build_model: Callable[[], nn.Module],
    load: Callable[[], Tensors],
    *,
    target: float,
    description: str = "",
    **task_fields: Any,
) -> Task:
    """A :class:`Task` that trains ``build_model()`` with cross-entropy on ``load()``'s tensors.

    ``load`` returns ``(x_train, y_train, x_val, y_val)``; it is called once per device.
    ``task_fields`` are passed to :class:`Task` (``steps``, ``batch_size``, ``references`` ...).
    """
    cache: dict[str, ClassificationData] = {}

    def load_data(device: torch.device) -> ClassificationData:
        key = str(device)
        if key not in cache:
            cache[key] = ClassificationData(*load(), device=device)
        return cache[key]

    return Task(
        name=name,
        description=description or f"classification: {name}",
        metric="accuracy",
        higher_is_better=True,
        target=target,
        build_model=build_model,
        load_data=load_data,
        **task_fields,
    )
