"""A tiny, fast task for the harness tests (a plugin: ``--plugin tests/bench/tiny_task.py``).

``GRADKIT_TINY_SLEEP`` (seconds per step) slows it down for the kill/resume and worker tests.
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn

from gradkit.bench import classification_task, register_task


def _blobs():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 8, generator=g) * 2
    y = torch.arange(300) % 3
    x = centers[y] + torch.randn(300, 8, generator=g)
    return x[:240], y[:240], x[240:], y[240:]


class _Slow(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        self.sleep = float(os.environ.get("GRADKIT_TINY_SLEEP", "0"))

    def forward(self, x):
        if self.sleep and self.training:
            time.sleep(self.sleep)
        return self.net(x)


TINY = register_task(
    classification_task(
        "tiny",
        _Slow,
        _blobs,
        target=0.9,
        description="three Gaussian blobs in 8-D, MLP (test task)",
        steps=30,
        batch_size=32,
        eval_every=10,
        trials=2,
        seeds=2,
        lr_factors=(1.0, 30.0),
    ),
    replace=True,
)
