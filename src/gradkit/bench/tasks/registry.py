"""The registry of tasks ``gradkit compare --task NAME`` can run.

The built-in tasks (:mod:`gradkit.bench.tasks.builtin`) are registered when this module is first
imported; plug-ins add theirs with :func:`register_task`. Names are compared in their canonical
form (:func:`gradkit.errors.canonical_name`: case, dashes, spaces and underscores alike), so
``--task MNIST1D_CNN`` finds ``mnist1d-cnn``.
"""

from __future__ import annotations

from gradkit.bench.tasks.builtin import BUILTIN_TASKS
from gradkit.bench.tasks.interface import Task
from gradkit.errors import UnknownNameError, canonical_name

__all__ = ["DEFAULT_TASKS", "get_task", "list_tasks", "register_task"]

#: What ``gradkit compare`` runs by default: a training task and the 2-D test functions.
DEFAULT_TASKS = ("mnist1d-cnn", "rosenbrock", "rastrigin", "quadratic")

_TASKS: dict[str, Task] = {}


def register_task(task: Task, *, replace: bool = False) -> Task:
    """Make ``task`` available to ``gradkit compare --task``; returns it.

    Raises ``ValueError`` when a task of the same (canonical) name is registered and
    ``replace`` is false. A replaced task with another model or data gets its own studies: the
    study name covers a fingerprint of the task (see :func:`gradkit.bench.tasks.fingerprint`).
    """
    if not isinstance(task, Task):
        raise TypeError(f"register_task expects a Task, got {type(task).__name__}")
    key = canonical_name(task.name)
    if key in _TASKS and not replace:
        raise ValueError(f"a task named '{task.name}' is already registered (use replace=True)")
    _TASKS[key] = task
    return task


def get_task(name: str) -> Task:
    """The registered task ``name``; raises :class:`~gradkit.errors.UnknownNameError`."""
    try:
        return _TASKS[canonical_name(name)]
    except KeyError:
        raise UnknownNameError("task", name, (t.name for t in _TASKS.values())) from None


def list_tasks() -> list[Task]:
    """All registered training tasks, sorted by name."""
    return sorted(_TASKS.values(), key=lambda t: canonical_name(t.name))


for _task in BUILTIN_TASKS:
    register_task(_task)
