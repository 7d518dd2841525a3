"""The comparison harness behind ``gradkit compare``: tasks, training, tuning, storage, report.

Add a task with :func:`register_task` (see :func:`classification_task` for the short way) and
run it with ``gradkit compare --plugin my_module --task my-task``.
"""

from gradkit.bench.classification import ClassificationData, classification_task
from gradkit.bench.task import Task, TaskData, get_task, list_tasks, register_task

__all__ = [
    "ClassificationData",
    "Task",
    "TaskData",
    "classification_task",
    "get_task",
    "list_tasks",
    "register_task",
]
