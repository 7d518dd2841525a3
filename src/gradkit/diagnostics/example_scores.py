"""Per-example scores: gradient coherence, GraNd and EL2N.

Gradient coherence (Chatterjee & Zielinski, "On the Generalization Mystery in Deep Learning";
the metric of Chatterjee, "Coherent Gradients", ICLR 2020). For per-example gradients ``g_z`` of
a sample ``V`` of ``m`` examples::

    alpha(V) = E_{z, z' in V}[g_z . g_z'] / E_{z in V}[g_z . g_z]
             = ||mean_z g_z||^2 / mean_z ||g_z||^2                     in [0, 1]

(``z`` and ``z'`` drawn independently, so ``z = z'`` is included). ``alpha = 1`` when all
gradients are equal; when they are pairwise orthogonal with equal norms ``alpha = 1/m``, the
paper's orthogonal limit ``alpha_perp``; the paper reports ``alpha / alpha_perp = m alpha``.

GraNd and EL2N (Paul, Ganguli, Dziugaite, "Deep Learning on a Data Diet: Finding Important
Examples Early in Training", arXiv:2107.07075), averaged over models (the paper
averages over several independent initialisations)::

    GraNd(x, y) = E_w || grad_w loss(f_w(x), y) ||_2
    EL2N(x, y)  = E_w || softmax(f_w(x)) - onehot(y) ||_2

High scores mark hard or mislabelled examples; the paper prunes the lowest-scoring ones.
Per-example gradients come from :func:`gradkit.curvature.per_example_gradients` (vmap), so
models must not use batch-norm in training mode (call ``model.eval()``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradkit.curvature._utils import check_positive_int
from gradkit.diagnostics._common import Batch, LossFn, device_of, iter_batches, resolve_params


def _models(models: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    out = [models] if isinstance(models, nn.Module) else list(models)
    if not out:
        raise ValueError("models must be a module or a non-empty sequence of modules")
    return out


def _chunks(inputs: Tensor, targets: Tensor, batch_size: int | None) -> list[Batch]:
    """``(inputs, targets)`` in slices of ``batch_size`` (checked here, before any work)."""
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(
            f"inputs and targets have different lengths: {inputs.shape[0]} vs {targets.shape[0]}"
        )
    check_positive_int("batch_size", batch_size, allow_none=True)
    step = max(inputs.shape[0] if batch_size is None else batch_size, 1)
    return [(inputs[i : i + step], targets[i : i + step]) for i in range(0, inputs.shape[0], step)]


def _flat_per_example(
    model: nn.Module,
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
    params: Sequence[Tensor] | None,
) -> Tensor:
    from gradkit.curvature import per_example_gradients

    grads = per_example_gradients(model, loss_fn, x, y, params=params)
    return torch.cat([g.reshape(x.shape[0], -1) for g in grads.values()], dim=1)


def grand_scores(
    models: nn.Module | Sequence[nn.Module],
    loss_fn: LossFn,
    inputs: Tensor,
    targets: Tensor,
    batch_size: int | None = 256,
) -> Tensor:
    """GraNd score of each example: per-example gradient norm, averaged over ``models``.

    Gradients are taken with respect to every trainable parameter. Returns ``Tensor[n]``.
    """
    models = _models(models)
    chunks = _chunks(inputs, targets, batch_size)
    total = torch.zeros(inputs.shape[0], dtype=torch.float64)
    for model in models:
        device = device_of(model)
        parts = []
        for x, y in chunks:
            g = _flat_per_example(model, loss_fn, x.to(device), y.to(device), None)
            parts.append(g.norm(dim=1).double().cpu())
        total += torch.cat(parts)
    return total / len(models)


@torch.no_grad()
def el2n_scores(
    models: nn.Module | Sequence[nn.Module],
    inputs: Tensor,
    targets: Tensor,
    batch_size: int | None = 1024,
) -> Tensor:
    """EL2N score of each example: ``||softmax(logits) - onehot(y)||_2`` averaged over models.

    The models must output class logits ``[n, C]``; ``targets`` are integer labels in ``[0, C)``.
    """
    models = _models(models)
    if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError("el2n_scores needs integer class labels as targets")
    chunks = _chunks(inputs, targets, batch_size)
    total = torch.zeros(inputs.shape[0], dtype=torch.float64)
    for model in models:
        device = device_of(model)
        parts = []
        for x, y in chunks:
            logits = model(x.to(device))
            if logits.dim() != 2:
                raise ValueError(
                    f"el2n_scores needs logits of shape [batch, classes], got {tuple(logits.shape)}"
                )
            c = logits.shape[1]
            y = y.to(device).long()
            if y.min() < 0 or y.max() >= c:
                raise ValueError(f"targets must be class indices in [0, {c})")
            err = logits.float().softmax(dim=1) - F.one_hot(y, c).float()
            parts.append(err.norm(dim=1).double().cpu())
        total += torch.cat(parts)
    return total / len(models)


@dataclass
class Coherence:
    """Gradient coherence of a sample of ``m`` examples."""

    alpha: float  # ||mean g||^2 / mean ||g||^2
    alpha_perp: float  # 1 / m, the value for pairwise-orthogonal equal-norm gradients
    ratio: float  # alpha / alpha_perp
    num_examples: int


def gradient_coherence(
    model: nn.Module,
    loss_fn: LossFn,
    data: Batch | Iterable[Batch],
    params: Sequence[Tensor] | None = None,
) -> Coherence:
    """Coherence ``alpha`` of the per-example gradients over all examples in ``data``.

    Streams over the batches, keeping only the running sum of gradients and of squared norms.
    """
    params = resolve_params(model, params)
    device = params[0].device
    sum_g: Tensor | None = None
    sum_sq = 0.0
    m = 0
    for x, y in iter_batches(data):
        g = _flat_per_example(model, loss_fn, x.to(device), y.to(device), params).double()
        sum_g = g.sum(0) if sum_g is None else sum_g + g.sum(0)
        sum_sq += float((g * g).sum())
        m += g.shape[0]
    if sum_g is None or m == 0:
        raise ValueError("data is empty: no examples were found")
    if sum_sq == 0.0:
        raise ValueError("all per-example gradients are zero: coherence is undefined")
    mean_g = sum_g / m
    alpha = float(mean_g @ mean_g) / (sum_sq / m)
    return Coherence(alpha, 1.0 / m, alpha * m, m)
