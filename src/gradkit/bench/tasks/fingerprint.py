"""A task's fingerprint: what a study's identity needs to know of the task definition.

Two registrations of one task name with another model, other data, another metric or target,
or another declared ``version`` get different fingerprints, so their trials never share a
study (``gradkit compare`` names a study after the fingerprint). The fingerprint covers:

- the model: ``repr`` of a freshly built model (its modules and their settings) and the name,
  shape and dtype of every parameter and buffer;
- the data: ``data.signature()`` when the task's data provides one (the built-in data hash
  their tensors), otherwise a hash of the first training batches drawn with a fixed seed;
- the scoring: metric name, direction, target and the value recorded for a diverged run;
- ``task.version``: bump it when the loss or anything else the fingerprint cannot see changes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

from gradkit.bench.tasks.interface import Task

__all__ = ["hash_data", "model_signature", "task_fingerprint"]


def _update(h: Any, obj: Any) -> None:
    """Feed ``obj`` (tensors, arrays, numbers, strings and containers of them) into ``h``."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif hasattr(obj, "tobytes") and hasattr(obj, "dtype") and hasattr(obj, "shape"):
        h.update(f"A{obj.dtype}{tuple(obj.shape)}".encode() + obj.tobytes())
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(f"K{k}".encode())
            _update(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _update(h, v)
    else:
        h.update(f"V{type(obj).__name__}:{obj!r}".encode())


def hash_data(*objs: Any) -> str:
    """SHA-1 of tensors/arrays (dtype, shape and bytes) and plain values, nested in any way."""
    h = hashlib.sha1()
    for obj in objs:
        _update(h, obj)
    return h.hexdigest()


def model_signature(model: nn.Module) -> str:
    """SHA-1 of the model's structure: its ``repr`` and every parameter's and buffer's name,
    shape and dtype (the values are left out: the seed sets them)."""
    shapes = [(n, tuple(p.shape), str(p.dtype)) for n, p in model.named_parameters()]
    shapes += [(n, tuple(b.shape), str(b.dtype)) for n, b in model.named_buffers()]
    return hashlib.sha1(json.dumps([repr(model), shapes]).encode()).hexdigest()


def _data_signature(task: Task, device: torch.device) -> str:
    data = task.load_data(device)
    signature = getattr(data, "signature", None)
    if callable(signature):
        return f"declared:{signature()}"
    gen = torch.Generator().manual_seed(0)
    return "batches:" + hash_data(*(data.sample_batch(gen, task.batch_size) for _ in range(2)))


def task_fingerprint(task: Task, device: torch.device | str = "cpu") -> str:
    """A 16-hex-digit digest of the task's model, data, scoring and version (see the module
    docstring); builds the model once and loads the data on ``device``."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = task.build_model()
    parts = {
        "model": model_signature(model),
        "data": _data_signature(task, device),
        "metric": task.metric,
        "higher_is_better": task.higher_is_better,
        "target": task.target,
        "worst": task.worst,
        "version": task.version,
    }
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
