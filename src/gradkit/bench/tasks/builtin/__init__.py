"""The built-in training tasks. Each module defines :class:`~gradkit.bench.tasks.Task` objects
and registers nothing; :mod:`gradkit.bench.tasks.registry` registers :data:`BUILTIN_TASKS`."""

from gradkit.bench.tasks.builtin.charlm import STDLIB_CHARLM
from gradkit.bench.tasks.builtin.digits import DIGITS_CNN
from gradkit.bench.tasks.builtin.mnist1d import MNIST1D_CNN, MNIST1D_MLP, MNIST1D_MULTITASK

#: Every built-in task, in the order ``--list-tasks`` shows them.
BUILTIN_TASKS = (MNIST1D_CNN, MNIST1D_MLP, MNIST1D_MULTITASK, DIGITS_CNN, STDLIB_CHARLM)

__all__ = [
    "BUILTIN_TASKS",
    "DIGITS_CNN",
    "MNIST1D_CNN",
    "MNIST1D_MLP",
    "MNIST1D_MULTITASK",
    "STDLIB_CHARLM",
]
