"""Permutation alignment of hidden units by weight matching (Git Re-Basin).

Ainsworth, Hayase, Srinivasa, "Git Re-Basin: Merging Models modulo Permutation Symmetries",
arXiv:2209.04836 (Sec. 3.2, Algorithm 1). Hidden units of a layer can be reordered, together
with the matching rows of the next layer's weights, without changing the function the network
computes. Weight matching looks for the permutations ``pi_l`` of model B's hidden units that
maximise the agreement of the weights with model A::

    max_pi  sum_l < W_l^A , P_l W_l^B P_{l-1}^T >_F       (+ biases, normalization params)

by coordinate descent: fix all permutations but one; the best one is then a linear assignment
problem ``max_P <C, P>`` with ``C = sum_{tensors touching l} A_(l) B_(l)^T`` (each tensor
unfolded along the permuted axis, its other axes already permuted), solved exactly with
``scipy.optimize.linear_sum_assignment``. Sweep layers in random order until no permutation
changes. After alignment, interpolation between A and permuted B usually shows a much lower
loss barrier (see :mod:`gradkit.diagnostics.connectivity`).

Supported: ``nn.Sequential`` models (nested Sequentials are flattened) built from ``Linear``,
``Conv1d/2d/3d`` (groups=1), ``BatchNorm``, ``LayerNorm`` (on features of MLPs), elementwise
activations, dropout, pooling and ``Flatten`` (conv -> linear). Anything else (residual
connections, attention, grouped convolutions) raises ``NotImplementedError``; describe such
models with a hand-written :class:`PermutationSpec` instead.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from gradkit._optional import import_optional
from gradkit.curvature._utils import check_positive_int

_ELEMENTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
)
_POOL = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class PermutationSpec:
    """Which axis of which state_dict tensor each hidden-unit permutation acts on.

    Attributes:
        sizes: permutation name -> number of units.
        axes: state_dict key -> one entry per axis of the tensor's *matching view*: the name of
            the permutation acting on that axis, or ``None``.
        views: state_dict key -> shape in which the tensor is seen for matching (e.g. a linear
            weight after ``Flatten`` seen as ``(out, channels, positions)``); default its shape.
    """

    sizes: dict[str, int]
    axes: dict[str, tuple[str | None, ...]]
    views: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def touching(self, perm: str) -> list[tuple[str, int]]:
        """(key, axis) pairs on which permutation ``perm`` acts."""
        return [(k, i) for k, ax in self.axes.items() for i, p in enumerate(ax) if p == perm]


def _flatten_sequential(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    out = []
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            out.extend(_flatten_sequential(child, full + "."))
        else:
            out.append((full, child))
    return out


def permutation_spec(model: nn.Module) -> PermutationSpec:
    """Build the :class:`PermutationSpec` of an ``nn.Sequential`` MLP or CNN."""
    if not isinstance(model, nn.Sequential):
        raise NotImplementedError(
            f"automatic permutation specs need an nn.Sequential model, got {type(model).__name__};"
            " write a PermutationSpec by hand"
        )
    layers = _flatten_sequential(model)
    weight_idx = [i for i, (_, m) in enumerate(layers) if isinstance(m, (nn.Linear, *_CONV))]
    if len(weight_idx) < 2:
        raise ValueError("the model needs at least two weight layers to have hidden units")
    last = weight_idx[-1]
    sizes: dict[str, int] = {}
    axes: dict[str, tuple[str | None, ...]] = {}
    views: dict[str, tuple[int, ...]] = {}
    cur: str | None = None  # permutation of the current feature / channel axis
    spatial = False  # current activation has spatial dims (after a conv)
    flattened = False  # a Flatten of a spatial activation happened since the last weight layer
    for i, (name, m) in enumerate(layers):
        if isinstance(m, (nn.Linear, *_CONV)):
            is_conv = isinstance(m, _CONV)
            if is_conv and m.groups != 1:
                raise NotImplementedError(f"{name}: grouped convolutions are not supported")
            if is_conv and flattened:
                raise NotImplementedError(f"{name}: convolution after Flatten is not supported")
            new = None if i == last else f"P_{name}"
            if new is not None:
                sizes[new] = m.weight.shape[0]
            if isinstance(m, nn.Linear) and flattened and cur is not None:
                channels = sizes[cur]
                if m.in_features % channels:
                    raise ValueError(f"{name}: in_features not a multiple of {channels} channels")
                views[f"{name}.weight"] = (m.out_features, channels, m.in_features // channels)
                axes[f"{name}.weight"] = (new, cur, None)
            else:
                axes[f"{name}.weight"] = (new, cur) + (None,) * (m.weight.dim() - 2)
            if m.bias is not None:
                axes[f"{name}.bias"] = (new,)
            cur, spatial, flattened = new, is_conv, False
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            for k in ("weight", "bias", "running_mean", "running_var"):
                if getattr(m, k, None) is not None:
                    axes[f"{name}.{k}"] = (cur,)
        elif isinstance(m, nn.LayerNorm):
            if spatial and not flattened:
                raise NotImplementedError(f"{name}: LayerNorm over conv feature maps")
            if len(m.normalized_shape) != 1:
                raise NotImplementedError(f"{name}: LayerNorm over more than one dim")
            if flattened:
                raise NotImplementedError(f"{name}: LayerNorm after Flatten of a conv output")
            for k in ("weight", "bias"):
                if getattr(m, k, None) is not None:
                    axes[f"{name}.{k}"] = (cur,)
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise NotImplementedError(f"{name}: only Flatten(start_dim=1, end_dim=-1)")
            if spatial:
                flattened = True
                spatial = False
        elif isinstance(m, _ELEMENTWISE + _POOL):
            continue
        else:
            raise NotImplementedError(
                f"{name}: {type(m).__name__} is not supported by automatic weight matching"
            )
    for k in model.state_dict():
        if k not in axes and not k.endswith("num_batches_tracked"):
            raise NotImplementedError(f"state_dict entry {k} is not covered by the spec")
    return PermutationSpec(sizes, axes, views)


def _view(spec: PermutationSpec, key: str, t: Tensor) -> Tensor:
    return t.reshape(spec.views[key]) if key in spec.views else t


def _permuted(
    spec: PermutationSpec,
    key: str,
    t: Tensor,
    perms: dict[str, Tensor],
    except_axis: int | None = None,
) -> Tensor:
    w = _view(spec, key, t)
    for axis, p in enumerate(spec.axes[key]):
        if p is not None and axis != except_axis:
            w = w.index_select(axis, perms[p].to(w.device))
    return w


def weight_matching(
    model_a: nn.Module,
    model_b: nn.Module,
    spec: PermutationSpec | None = None,
    max_iter: int = 100,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Permutations of model B's hidden units that best match model A's weights.

    Returns ``perm name -> index tensor``: unit ``i`` of the aligned B is unit ``perm[i]`` of B.
    """
    check_positive_int("max_iter", max_iter)
    spec = permutation_spec(model_a) if spec is None else spec
    sd_a = {k: v.detach().double().cpu() for k, v in model_a.state_dict().items()}
    sd_b = {k: v.detach().double().cpu() for k, v in model_b.state_dict().items()}
    for k in spec.axes:
        if k not in sd_a or k not in sd_b or sd_a[k].shape != sd_b[k].shape:
            raise ValueError(f"{k}: missing or of different shape in the two models")
    perms = {p: torch.arange(n) for p, n in spec.sizes.items()}
    touching = {p: spec.touching(p) for p in spec.sizes}
    rng = np.random.default_rng(seed)
    names = list(spec.sizes)
    assignment = import_optional("scipy.optimize", "weight matching")
    for _ in range(max_iter):
        changed = False
        for idx in rng.permutation(len(names)):
            p = names[idx]
            n = spec.sizes[p]
            cost = torch.zeros(n, n, dtype=torch.float64)
            for key, axis in touching[p]:
                wa = _view(spec, key, sd_a[key]).movedim(axis, 0).reshape(n, -1)
                wb = _permuted(spec, key, sd_b[key], perms, except_axis=axis)
                cost += wa @ wb.movedim(axis, 0).reshape(n, -1).T
            c = cost.numpy()
            _, col = assignment.linear_sum_assignment(c, maximize=True)
            old = c[np.arange(n), perms[p].numpy()].sum()
            new = c[np.arange(n), col].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[p] = torch.as_tensor(col, dtype=torch.long)
                changed = True
        if not changed:
            break
    return perms


def apply_permutation(
    model: nn.Module, perms: dict[str, Tensor], spec: PermutationSpec | None = None
) -> nn.Module:
    """A copy of ``model`` with its hidden units permuted by ``perms`` (same function)."""
    spec = permutation_spec(model) if spec is None else spec
    missing = set(spec.sizes) - set(perms)
    if missing:
        raise ValueError(f"perms lacks permutations {sorted(missing)}")
    for p, n in spec.sizes.items():
        idx = perms[p]
        if idx.shape != (n,) or not torch.equal(torch.sort(idx.cpu()).values, torch.arange(n)):
            raise ValueError(f"perms[{p!r}] is not a permutation of {n} units")
    sd = model.state_dict()
    new_sd = {}
    for k, v in sd.items():
        if k in spec.axes:
            new_sd[k] = _permuted(spec, k, v.detach(), perms).reshape(v.shape).clone()
        else:
            new_sd[k] = v.detach().clone()
    out = copy.deepcopy(model)
    out.load_state_dict(new_sd)
    return out


def align(
    model_a: nn.Module,
    model_b: nn.Module,
    spec: PermutationSpec | None = None,
    max_iter: int = 100,
    seed: int = 0,
) -> tuple[nn.Module, dict[str, Tensor]]:
    """Permute model B onto model A by weight matching; returns ``(aligned_b, perms)``."""
    spec = permutation_spec(model_a) if spec is None else spec
    perms = weight_matching(model_a, model_b, spec, max_iter=max_iter, seed=seed)
    return apply_permutation(model_b, perms, spec), perms


def random_permutation(
    model: nn.Module, spec: PermutationSpec | None = None, seed: int = 0
) -> dict[str, Tensor]:
    """Random permutations of every hidden layer (for tests and sanity checks)."""
    spec = permutation_spec(model) if spec is None else spec
    gen = torch.Generator().manual_seed(seed)
    return {p: torch.randperm(n, generator=gen) for p, n in spec.sizes.items()}
