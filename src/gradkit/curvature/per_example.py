"""Per-example gradients with ``torch.func.vmap`` over ``torch.func.grad``.

For a batch ``(x_i, y_i)`` this returns ``g_i = d loss_fn(model(x_i[None]), y_i[None]) / d theta``
for every example ``i`` in one vectorised call (no Python loop over examples). Used by the
empirical-Fisher operator and by per-example diagnostics (gradient coherence, GraNd).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from gradkit.curvature._utils import check_scalar_loss

LossFn = Callable[[Tensor, Tensor], Tensor]


def named_params(model: nn.Module, params: Sequence[Tensor] | None) -> dict[str, Tensor]:
    """Map parameter names of ``model`` to the selected tensors (all with requires_grad if None)."""
    named = dict(model.named_parameters())
    if params is None:
        sel = {n: p for n, p in named.items() if p.requires_grad}
    else:
        by_id = {id(p): n for n, p in named.items()}
        sel = {}
        for p in params:
            if id(p) not in by_id:
                raise ValueError("params must be parameters of the model (see model.parameters())")
            sel[by_id[id(p)]] = p
    if not sel:
        raise ValueError("the model has no parameters with requires_grad=True to differentiate")
    return sel


def per_example_gradients(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    params: Sequence[Tensor] | None = None,
) -> dict[str, Tensor]:
    """Gradients of the loss of each example separately.

    Args:
        model: any ``nn.Module`` whose forward works on a batch of one example (no batch-norm in
            training mode: call ``model.eval()`` first).
        loss_fn: ``loss_fn(outputs, targets) -> scalar``; it is called on a batch of one example.
        inputs, targets: a batch; the first dimension indexes examples.
        params: the parameters to differentiate (default: all with ``requires_grad``).

    Returns:
        ``{name: Tensor[batch, *param.shape]}`` for the selected parameters, in model order.
    """
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(
            f"inputs and targets must have the same batch size, got {inputs.shape[0]} "
            f"and {targets.shape[0]}"
        )
    if inputs.shape[0] == 0:
        raise ValueError("per_example_gradients needs a non-empty batch")
    sel = named_params(model, params)
    detached = {n: p.detach() for n, p in sel.items()}

    def loss_one(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(model, p, (x.unsqueeze(0),), strict=False)
        return check_scalar_loss(loss_fn(out, y.unsqueeze(0)))

    try:
        return vmap(grad(loss_one), in_dims=(None, 0, 0), randomness="different")(
            detached, inputs, targets
        )
    except RuntimeError as err:  # pragma: no cover - message depends on the model
        raise RuntimeError(
            "per_example_gradients failed under torch.func.vmap; models with batch-norm in "
            "training mode or in-place updates of buffers are not supported (call model.eval()). "
            f"Original error: {err}"
        ) from err


def per_example_gradient_matrix(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    params: Sequence[Tensor] | None = None,
) -> Tensor:
    """Per-example gradients flattened into a ``[batch, num_params]`` matrix (params order)."""
    grads = per_example_gradients(model, loss_fn, inputs, targets, params)
    b = inputs.shape[0]
    return torch.cat([g.reshape(b, -1) for g in grads.values()], dim=1)
