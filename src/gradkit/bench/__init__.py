"""The comparison harness behind ``gradkit compare``, organised by stage so that a comparison's
data flows one way:

- :mod:`gradkit.bench.tasks`: what is trained (the task interface, built-in tasks, registry);
- :mod:`gradkit.bench.protocol`: the rules of a fair comparison (optimizers, budgets, the lr
  grid, study identity, statistics);
- :mod:`gradkit.bench.execution`: training runs, studies, workers, storage, timing;
- :mod:`gradkit.bench.report`: reading the studies back, ranking, tables and figures;
- :mod:`gradkit.bench.compare`: the ``gradkit compare`` command tying the stages together.

Add a task with :func:`register_task` (see :func:`classification_task` for the short way) and
run it with ``gradkit compare --plugin my_module --task my-task``. Only the task layer is
imported here (torch only); the other stages need the ``compare`` extra
(``pip install "gradkit[compare]"``).
"""

from gradkit.bench._moved import install as _install_moved_modules
from gradkit.bench.tasks import (
    ClassificationData,
    Task,
    TaskData,
    classification_task,
    get_task,
    list_tasks,
    register_task,
)

_install_moved_modules()

__all__ = [
    "ClassificationData",
    "Task",
    "TaskData",
    "classification_task",
    "get_task",
    "list_tasks",
    "register_task",
]
