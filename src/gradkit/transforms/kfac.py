"""K-FAC: Kronecker-factored approximate curvature for ``nn.Linear`` and ``nn.Conv2d`` layers.

For a linear layer ``s = W a (+ b)`` the Fisher block of its weights is approximated by a
Kronecker product of two small matrices (Martens & Grosse, section 3):

    A = E[a~ a~^T]        (a~ = [a, 1] when the layer has a bias: the bias column)
    G = E[g g^T]          (g = dL_i/ds, the per-example gradient w.r.t. the layer output)
    F ~ A (x) G           (with vec stacking columns: vec(dW) = a~ (x) g)

and the preconditioned direction of the layer's gradient ``D = [dW, db]`` (``out x (in + 1)``) is
``(A (x) G)^-1 vec(D) = vec(G^-1 D A^-1)``. A Conv2d kernel is the matrix
``(out, in * kh * kw)`` acting on the unfolded input patches, with the factors of KFC (Grosse &
Martens, "A Kronecker-factored approximate Fisher matrix for convolution layers", arXiv
1602.01407): ``Omega (x) Gamma`` with ``Omega = E_i[sum_t a~_t a~_t^T]`` over the spatial
positions ``t`` and ``Gamma = E_i[(1/|T|) sum_t g_t g_t^T]``, i.e. (the ``|T|`` moved between them)
``A = mean over all patches of a~ a~^T`` and ``G = (1/N) sum_{i,t} g_{i,t} g_{i,t}^T``.

**Statistics.** :class:`KFACStatistics` registers a forward hook on every ``nn.Linear`` and every
``nn.Conv2d`` with ``groups=1`` and zero padding of a model whose weight is trainable; the hook
keeps the layer's input and registers a hook on the output tensor, which, when the backward pass
reaches it, adds ``(1/R) sum_r a~_r a~_r^T`` and ``c * sum_r d_r d_r^T`` to the layer's pending
statistics (``R`` rows: the batch, batch x positions for ``(N, T, in)`` Linear inputs, or batch x
output pixels for a Conv2d; ``d_r`` the rows of the output gradient; with ``N`` examples (``N = R``
for a Linear, the batch size for a Conv2d), ``c = N`` for a loss that is the *mean* over the
examples, which rescales ``d_r`` to the per-example gradient ``N d_r``, and ``c = 1/N`` for a
*summed* loss: the construction option ``loss_reduction``). Only forward passes whose backward pass
ran count; several backward passes before one step (gradient accumulation) are averaged. The
optimizer consumes the pending statistics at its step and clears them after every step (also a
skipped one).

**The rule** (:class:`KFACPreconditioner`), per layer at its ``k``-th step (``k`` the step count
of its weight):

    eps_k = min(1 - 1/k, stat_decay)                       (the paper's section 5 average)
    A <- eps_k A + (1 - eps_k) A_batch,   G <- eps_k G + (1 - eps_k) G_batch
    on k = 1, 1 + f, 1 + 2f, ...  (f = precondition_frequency):
        damping_split="pi":   pi = sqrt((tr(A) / dim A) / (tr(G) / dim G))
                              A_inv = (A + pi sqrt(damping) I)^-1
                              G_inv = (G + sqrt(damping) / pi I)^-1
        damping_split="sqrt": A_inv = (A + sqrt(damping) I)^-1
                              G_inv = (G + sqrt(damping) I)^-1
    out = G_inv D A_inv        (split back into the weight's and the bias's update)

``damping_split="pi"`` is the factored Tikhonov damping of the paper's section 6.3 (``pi = 1``
where a trace is zero); ``"sqrt"`` the plain split. Both are the exact inverse of
``(A + d_A I) (x) (G + d_G I)`` with ``d_A d_G = damping``, which is ``A (x) G + damping I``
plus the cross terms ``d_A I (x) G + A (x) d_G I``.

``precondition_frequency``, ``stat_decay`` and ``damping`` are **group hyperparameters** (read
every step, saved in the state dict, so a schedule may change them and a resumed run refreshes on
the same steps); the inverses keep the damping of the step that computed them.

Parameters that are not the weight or bias of a registered layer (norm gains, embeddings,
grouped or depthwise convolutions, parameters of an optimizer built without a model) pass through
unchanged: the optimizer's declared first-order rule (see :mod:`gradkit.optim.kfac`) applies to
them. A layer's weight and bias must be in the same param group.

Factors and inverses are float64 for float64 weights and float32 otherwise (bf16 included).
Complex parameters are refused.

Martens & Grosse, "Optimizing Neural Networks with Kronecker-factored Approximate Curvature",
ICML 2015, arXiv 1503.05671.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from gradkit.core.hyperparams import integer, interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList
from gradkit.transforms.preconditioning import damped_inverse_root, factor_dtype, update_factor

__all__ = [
    "DAMPING_SPLITS",
    "LOSS_REDUCTIONS",
    "KFACPreconditioner",
    "KFACStatistics",
    "input_rows",
    "kfac_damping_terms",
]

DAMPING_SPLITS = ("pi", "sqrt")
LOSS_REDUCTIONS = ("mean", "sum")


def _supported_conv(m: nn.Module) -> bool:
    """A Conv2d whose patches ``unfold`` gives: groups 1, zero padding given as numbers."""
    return (
        type(m) is nn.Conv2d
        and m.groups == 1
        and m.padding_mode == "zeros"
        and not isinstance(m.padding, str)
    )


def input_rows(layer: nn.Module, x: Tensor) -> Tensor:
    """The ``R x n`` rows that a layer's weight multiplies: the inputs of a Linear (all leading
    dimensions flattened), the unfolded patches of a Conv2d (channel-major, the order of
    ``weight.reshape(out, -1)``; ``R = N H_out W_out``)."""
    if isinstance(layer, nn.Conv2d):
        if x.dim() == 3:
            x = x.unsqueeze(0)
        patches = nn.functional.unfold(
            x,
            layer.kernel_size,
            dilation=layer.dilation,
            padding=layer.padding,  # type: ignore[arg-type]
            stride=layer.stride,
        )
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return x.reshape(-1, x.shape[-1])


class _LayerHook:
    """The forward hook of one layer (a plain object, so that models pickle and deep-copy)."""

    def __init__(self, stats: KFACStatistics, index: int) -> None:
        self.stats = stats
        self.index = index

    def __call__(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if not (torch.is_grad_enabled() and isinstance(output, Tensor) and output.requires_grad):
            return
        a = inputs[0].detach()
        stats, index = self.stats, self.index

        def on_grad(grad: Tensor) -> None:
            stats.add(index, a, grad.detach())

        output.register_hook(on_grad)


class KFACStatistics:
    """Kronecker-factor statistics of the ``nn.Linear`` and ``nn.Conv2d`` layers of a model,
    from hooks.

    ``layers``: the registered modules. ``pending(i)``: ``(A_batch, G_batch)`` of layer ``i``
    since the last :meth:`clear` (``None`` if none), see the module docstring for their scaling.
    :meth:`remove` takes the hooks off the model.
    """

    def __init__(self, model: nn.Module, loss_reduction: str = "mean") -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(
                f"Invalid loss_reduction: {loss_reduction!r}; loss_reduction must be one of "
                f"{LOSS_REDUCTIONS}"
            )
        self.loss_reduction = loss_reduction
        self.layers: list[nn.Linear | nn.Conv2d] = [
            m
            for m in model.modules()
            if (type(m) is nn.Linear or _supported_conv(m)) and m.weight.requires_grad
        ]
        self._sums: list[list[Any]] = [[None, None, 0] for _ in self.layers]
        self._handles = [
            m.register_forward_hook(_LayerHook(self, i)) for i, m in enumerate(self.layers)
        ]

    def has_bias(self, index: int) -> bool:
        """True if layer ``index`` has a trainable bias (its factor ``A`` has the bias column)."""
        b = self.layers[index].bias
        return b is not None and b.requires_grad

    def add(self, index: int, a: Tensor, grad: Tensor) -> None:
        """Add one backward pass's ``(1/R) a~^T a~`` and ``c d^T d`` to layer ``index``."""
        layer = self.layers[index]
        dt = factor_dtype(layer.weight.dtype)
        a = input_rows(layer, a).to(dt)
        if isinstance(layer, nn.Conv2d):  # (N, out, H, W) -> (N H W, out); examples: N
            examples = grad.shape[0] if grad.dim() == 4 else 1
            d = grad.reshape(examples, grad.shape[-3], -1).transpose(1, 2)
            d = d.reshape(-1, grad.shape[-3]).to(dt)
        else:
            d = grad.reshape(-1, grad.shape[-1]).to(dt)
            examples = d.shape[0]
        rows = a.shape[0]
        if self.has_bias(index):
            a = torch.cat([a, a.new_ones(rows, 1)], dim=1)
        a_batch = a.mT @ a / rows
        scale = float(examples) if self.loss_reduction == "mean" else 1.0 / examples
        g_batch = (d.mT @ d) * scale
        s = self._sums[index]
        s[0] = a_batch if s[0] is None else s[0] + a_batch
        s[1] = g_batch if s[1] is None else s[1] + g_batch
        s[2] += 1

    def pending(self, index: int) -> tuple[Tensor, Tensor] | None:
        """The mean ``(A_batch, G_batch)`` of layer ``index``'s backward passes since the last
        :meth:`clear`, or None."""
        a, g, n = self._sums[index]
        if n == 0:
            return None
        return a / n, g / n

    def clear(self) -> None:
        """Drop the pending statistics (the optimizer calls this after every step)."""
        self._sums = [[None, None, 0] for _ in self.layers]

    def remove(self) -> None:
        """Take the hooks off the model."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def parameter_map(self) -> dict[int, tuple[int, str]]:
        """``id(parameter) -> (layer index, "weight" | "bias")`` (computed afresh: copies of a
        model and its optimizer hold new parameters)."""
        out: dict[int, tuple[int, str]] = {}
        for i, m in enumerate(self.layers):
            out[id(m.weight)] = (i, "weight")
            if self.has_bias(i):
                out[id(m.bias)] = (i, "bias")
        return out


def kfac_damping_terms(a: Tensor, g: Tensor, damping: float, split: str) -> tuple[float, float]:
    """``(d_A, d_G)`` added to ``A`` and ``G`` (``d_A d_G = damping``), see the module docstring."""
    root = math.sqrt(damping)
    if split == "sqrt":
        return root, root
    ta = float(torch.diagonal(a).sum()) / a.shape[0]
    tg = float(torch.diagonal(g).sum()) / g.shape[0]
    pi = math.sqrt(ta / tg) if (ta > 0 and tg > 0 and math.isfinite(ta / tg)) else 1.0
    return pi * root, root / pi


class KFACPreconditioner(GradientTransformation):
    """K-FAC's direction ``G^-1 [dW, db] A^-1`` for registered Linear and Conv2d layers.

    See :mod:`gradkit.transforms.kfac` for the rule. ``statistics`` (a :class:`KFACStatistics`)
    is set when the optimizer is bound to a model; without it every parameter passes through.

    State (on the weight; zero-size on biases and pass-through parameters): ``kfac_a``,
    ``kfac_g`` (the factors), ``kfac_a_inv``, ``kfac_g_inv`` (their damped inverses).
    """

    flat_ok = False
    complex_ok = False
    hyperparameters = (
        interval("damping", 1e-3, 0.0, low_open=True),
        interval("stat_decay", 0.95, 0.0, 1.0, high_open=True),
        integer("precondition_frequency", 10, low=1),
    )

    def __init__(self, damping_split: str = "pi") -> None:
        if damping_split not in DAMPING_SPLITS:
            raise ValueError(
                f"Invalid damping_split: {damping_split!r}; damping_split must be one of "
                f"{DAMPING_SPLITS}"
            )
        self.damping_split = damping_split
        self.statistics: KFACStatistics | None = None

    def init(self, params: TensorList) -> State:
        names = ("kfac_a", "kfac_g", "kfac_a_inv", "kfac_g_inv")
        state: State = {k: [] for k in names}
        where = self.statistics.parameter_map() if self.statistics is not None else {}
        for p in params:
            dt = factor_dtype(p.dtype)
            entry = where.get(id(p))
            if entry is not None and entry[1] == "weight":
                out_f, in_f = p.shape[0], math.prod(p.shape[1:])
                in_f += int(self.statistics.has_bias(entry[0]))  # type: ignore[union-attr]
                sizes = (in_f, out_f, in_f, out_f)
            else:
                sizes = (0, 0, 0, 0)
            for k, n in zip(names, sizes):
                state[k].append(torch.zeros(n, n, dtype=dt, device=p.device))
        return state

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        stats = self.statistics
        if stats is None:
            return updates
        where = stats.parameter_map()
        index = {id(p): i for i, p in enumerate(params)}
        damping = float(ctx.group["damping"])
        decay = float(ctx.group["stat_decay"])
        freq = int(ctx.group["precondition_frequency"])
        out = list(updates)  # pass-through entries may alias the gradients: not marked owned
        for i, p in enumerate(params):
            entry = where.get(id(p))
            if entry is None or entry[1] != "weight":
                if entry is not None and id(stats.layers[entry[0]].weight) not in index:
                    raise ValueError(
                        "K-FAC preconditions a layer's weight and bias together: put both in the "
                        "same param group"
                    )
                continue
            layer = entry[0]
            a_fac, g_fac = state["kfac_a"][i], state["kfac_g"][i]
            a_inv, g_inv = state["kfac_a_inv"][i], state["kfac_g_inv"][i]
            bias_i = None
            if stats.has_bias(layer):
                bias_i = index.get(id(stats.layers[layer].bias))
                if bias_i is None:
                    raise ValueError(
                        "K-FAC preconditions a layer's weight and bias together: put both in "
                        "the same param group (and give both a gradient)"
                    )
            k = ctx.steps[i]
            batch = stats.pending(layer)
            if batch is None:
                raise RuntimeError(
                    f"K-FAC has no statistics for the registered layer {stats.layers[layer]} at "
                    "this step: run the forward and backward pass through the registered model "
                    "between steps"
                )
            eps_k = min(1.0 - 1.0 / k, decay)
            update_factor(a_fac, batch[0], eps_k)
            update_factor(g_fac, batch[1], eps_k)
            if (k - 1) % freq == 0:
                d_a, d_g = kfac_damping_terms(a_fac, g_fac, damping, self.damping_split)
                a_inv.copy_(damped_inverse_root(a_fac, 1.0, d_a))
                g_inv.copy_(damped_inverse_root(g_fac, 1.0, d_g))
            u = updates[i].reshape(updates[i].shape[0], -1).to(a_fac.dtype)
            if bias_i is not None:
                u = torch.cat([u, updates[bias_i].to(a_fac.dtype).unsqueeze(1)], dim=1)
            d = g_inv @ u @ a_inv
            if bias_i is not None:
                out[bias_i] = d[:, -1].to(updates[bias_i].dtype)
                d = d[:, :-1]
            out[i] = d.reshape(updates[i].shape).to(updates[i].dtype)
        return out

    def __repr__(self) -> str:
        return f"KFACPreconditioner(damping_split={self.damping_split!r})"
