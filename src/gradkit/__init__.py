"""gradkit: the gradient side of training neural networks.

- Optimizers from papers, as drop-in ``torch.optim`` optimizers built from composable
  gradient transforms: :func:`create_optimizer`, :func:`list_optimizers`, :mod:`gradkit.optim`.
- The transform layer: :func:`chain`, :class:`GradientTransformation`, :class:`ChainOptimizer`,
  :mod:`gradkit.transforms`.
- Parameter roles for geometry-aware methods: :func:`param_groups_by_role`.
- Curvature and diagnostics: :mod:`gradkit.curvature`, :mod:`gradkit.diagnostics`.
- The comparison harness: ``gradkit compare`` (:mod:`gradkit.bench`).
"""

from gradkit.core.hyperparams import Hyperparameter
from gradkit.core.optimizer import ChainOptimizer, NonFiniteGradientError
from gradkit.core.transform import Chain, GradientTransformation, SkipStep, StepContext, chain
from gradkit.errors import UnknownNameError
from gradkit.optim.registry import OptimizerInfo, create_optimizer, list_optimizers
from gradkit.roles import ParamRole, assign_roles, param_groups_by_role, params_by_role

__version__ = "0.2.0"

__all__ = [
    "Chain",
    "ChainOptimizer",
    "GradientTransformation",
    "Hyperparameter",
    "NonFiniteGradientError",
    "OptimizerInfo",
    "ParamRole",
    "SkipStep",
    "StepContext",
    "UnknownNameError",
    "assign_roles",
    "chain",
    "create_optimizer",
    "list_optimizers",
    "param_groups_by_role",
    "params_by_role",
]
