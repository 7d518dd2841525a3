"""Named optimizers, one short file per paper; each is a recipe of transforms.

Use :func:`gradkit.create_optimizer` by name or import the class from its module.
"""

from gradkit.optim.adam import Adam, AdamW
from gradkit.optim.registry import create_optimizer, get_info, list_optimizers, register_optimizer
from gradkit.optim.sgd import SGD

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "create_optimizer",
    "get_info",
    "list_optimizers",
    "register_optimizer",
]
