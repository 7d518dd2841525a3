"""Tasks: the interface (:mod:`~gradkit.bench.tasks.interface`), the ways to build one
(:mod:`~gradkit.bench.tasks.classification`), the 2-D test functions, the built-in tasks
(:mod:`~gradkit.bench.tasks.builtin`, which import the interface and nothing imports back)
and the registry (:mod:`~gradkit.bench.tasks.registry`)."""

from gradkit.bench.tasks.classification import ClassificationData, classification_task
from gradkit.bench.tasks.interface import Task, TaskData
from gradkit.bench.tasks.registry import get_task, list_tasks, register_task

__all__ = [
    "ClassificationData",
    "Task",
    "TaskData",
    "classification_task",
    "get_task",
    "list_tasks",
    "register_task",
]
