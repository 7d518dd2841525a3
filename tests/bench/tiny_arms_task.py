"""Tiny tasks for the gradient-source and multi-task tests of ``gradkit compare`` (a plugin:
``--plugin tests/bench/tiny_arms_task.py``): ``tiny-seq``, the tiny blobs with an
``nn.Sequential`` MLP (so every source applies), and ``tiny-multitask``, the same blobs with a
second label on a shared trunk."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gradkit.bench import classification_task, register_task
from gradkit.bench.tasks.multitask import MultiHeadNet, multitask_classification_task

PLUGIN = str(Path(__file__).resolve())


def _blobs():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 8, generator=g) * 2
    y = torch.arange(300) % 3
    x = centers[y] + torch.randn(300, 8, generator=g)
    return x[:240], y[:240], x[240:], y[240:]


def _two_labels():
    x, y, xv, yv = _blobs()
    # second task: the sign of the first feature (conflicts with nothing in particular)
    return x, [y, (x[:, 0] > 0).long()], xv, [yv, (xv[:, 0] > 0).long()]


def seq_mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    )


def two_head_net() -> MultiHeadNet:
    return MultiHeadNet(
        nn.Sequential(nn.Linear(8, 16), nn.ReLU()), [nn.Linear(16, 3), nn.Linear(16, 2)]
    )


TINY_SEQ = register_task(
    classification_task(
        "tiny-seq",
        seq_mlp,
        _blobs,
        target=0.9,
        description="three Gaussian blobs in 8-D, nn.Sequential MLP (test task)",
        steps=20,
        batch_size=32,
        eval_every=10,
        trials=1,
        seeds=1,
        lr_factors=(1.0, 30.0),
    ),
    replace=True,
)

TINY_MULTITASK = register_task(
    multitask_classification_task(
        "tiny-multitask",
        two_head_net,
        _two_labels,
        tasks=("blob", "sign"),
        target=0.9,
        steps=20,
        batch_size=32,
        eval_every=10,
        trials=1,
        seeds=1,
        lr_factors=(1.0, 30.0),
    ),
    replace=True,
)


def compare_tiny(out, *extra: str) -> int:
    """``gradkit compare`` in this process on this plugin's tasks: AdamW, one trial of one seed,
    one worker, quiet, writing to ``out``; ``extra`` adds the task and the arms."""
    from gradkit.cli import main

    args = ["compare", "--plugin", PLUGIN, "-o", "adamw", "--trials", "1", "--seeds", "1"]
    return main([*args, "--workers", "1", "--quiet", "--out", str(out), *extra])
