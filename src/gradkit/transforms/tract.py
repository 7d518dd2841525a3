"""TrAct: the first layer's weight update through the inverse second moment of its inputs.

For a first layer ``z = W x`` (a ``nn.Linear``, or a ``nn.Conv2d`` seen on its input patches)
TrAct takes a gradient step on the activations, ``z* = z - eta dL/dz``, and then the weights
closest to it: ``W* = argmin_W ||z* - W x||^2 + lambda b ||W - W_0||^2`` over the ``b`` rows
(examples, or examples x positions) of the batch. The closed form (Petersen et al., section 3) is
the ordinary weight gradient ``dW`` times the inverse regularised second moment of the inputs:

    dW_TrAct = dW (X^T X / b + lambda I)^-1

(``X``: the ``b x n`` rows of the layer input, or of its unfolded patches for a Conv2d; ``n``:
``in_features`` or ``in_channels * kh * kw``; the bias's gradient is unchanged). Any first-order
rule then takes ``dW_TrAct`` in place of ``dW``.

:class:`TrActStatistics` puts a forward hook on the layer; when the backward pass reaches its
output it adds ``X^T X / b`` of that pass (passes before one step are averaged). The optimizer
clears them after every step. :class:`TrActPreconditioner` applies the closed form to the
layer's weight and passes every other parameter through; ``tract_lambda`` (lambda, default
0.1, the paper's) is a group hyperparameter.

The ``n x n`` system is solved directly (``n`` is small for a first layer: 3 x 4 x 4 = 48 for a
patch-4 ViT stem, 3 x 7 x 7 = 147 for a ResNet stem); the authors' code switches to the
equivalent ``b x b`` Woodbury form when ``b < n``. With gradient accumulation their code
preconditions each micro-batch with its own matrix; here one averaged matrix preconditions the
accumulated gradient (identical for one backward pass per step).

Petersen, Borgelt & Ermon, "TrAct: Making First-layer Pre-Activations Trainable", NeurIPS
2024, arXiv 2410.23970.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gradkit.core.hyperparams import interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList
from gradkit.transforms.kfac import _LayerHook, input_rows
from gradkit.transforms.preconditioning import factor_dtype

__all__ = ["TrActPreconditioner", "TrActStatistics", "first_layer", "input_rows"]


def first_layer(model: nn.Module) -> nn.Linear | nn.Conv2d:
    """The first ``nn.Linear`` or ``nn.Conv2d`` of ``model`` in registration order."""
    for m in model.modules():
        if type(m) in (nn.Linear, nn.Conv2d):
            return m
    raise ValueError("TrAct needs a model with an nn.Linear or nn.Conv2d layer")


def _check_layer(layer: nn.Module) -> None:
    if type(layer) not in (nn.Linear, nn.Conv2d):
        raise ValueError(f"TrAct applies to an nn.Linear or nn.Conv2d layer, got {layer}")
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise ValueError(
                "TrAct supports Conv2d layers with groups=1, padding_mode='zeros' and numeric "
                f"padding, got {layer}"
            )


class TrActStatistics:
    """``X^T X / b`` of one layer's inputs from hooks (see :mod:`gradkit.transforms.tract`)."""

    def __init__(self, layer: nn.Module) -> None:
        _check_layer(layer)
        self.layer = layer
        self._sum: Tensor | None = None
        self._count = 0
        self._handle = layer.register_forward_hook(_LayerHook(self, 0))  # type: ignore[arg-type]

    def add(self, index: int, a: Tensor, grad: Tensor) -> None:
        """Add one backward pass's ``X^T X / b`` (``grad`` is not needed)."""
        x = input_rows(self.layer, a).to(factor_dtype(self.layer.weight.dtype))
        moment = x.mT @ x / x.shape[0]
        self._sum = moment if self._sum is None else self._sum + moment
        self._count += 1

    def pending(self) -> Tensor | None:
        """The mean ``X^T X / b`` since the last :meth:`clear`, or None."""
        return None if self._sum is None else self._sum / self._count

    def clear(self) -> None:
        self._sum, self._count = None, 0

    def remove(self) -> None:
        """Take the hook off the layer."""
        self._handle.remove()


class TrActPreconditioner(GradientTransformation):
    """``dW (X^T X / b + tract_lambda I)^-1`` for the registered first layer's weight; every
    other parameter passes through. ``statistics`` is set when the optimizer is bound to a
    model. No state."""

    flat_ok = False
    hyperparameters = (interval("tract_lambda", 0.1, 0.0, low_open=True),)

    def __init__(self) -> None:
        self.statistics: TrActStatistics | None = None

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        stats = self.statistics
        if stats is None:
            return updates
        weight = stats.layer.weight
        hit = [i for i, p in enumerate(params) if p is weight]
        if not hit:
            return updates
        i = hit[0]
        moment = stats.pending()
        if moment is None:
            raise RuntimeError(
                f"TrAct has no input statistics for {stats.layer} at this step: run the forward "
                "and backward pass through the registered model between steps"
            )
        lam = float(ctx.group["tract_lambda"])
        u = updates[i]
        g = u.reshape(u.shape[0], -1).to(moment.dtype)
        eye = torch.eye(moment.shape[0], dtype=moment.dtype, device=moment.device)
        d = torch.linalg.solve(moment + lam * eye, g.mT).mT  # the system is symmetric
        out = list(updates)
        out[i] = d.reshape(u.shape).to(u.dtype)
        return out

    def __repr__(self) -> str:
        return "TrActPreconditioner()"
