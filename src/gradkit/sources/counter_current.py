"""Counter-current learning: a feedforward network on the inputs and a feedback network on the
targets teach each other through layer-wise local losses.

Kao, Hariharan, "Counter-Current Learning: A Biologically Plausible Dual Network Approach for
Deep Learning", 2024, arXiv 2409.19841 (NeurIPS 2024).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from gradkit.sources._base import (
    GradientSource,
    LossFn,
    _Tally,
    check_positive_float,
    split_batch,
    write_grads,
)
from gradkit.sources.dfa import dfa_blocks

__all__ = ["CounterCurrent", "mirror_feedback"]

#: ``pair_loss(a, b) -> scalar``: the local loss between paired activations.
PairLoss = Callable[[Tensor, Tensor], Tensor]


def _linear_blocks(model: nn.Sequential) -> list[nn.Sequential]:
    blocks = dfa_blocks(model)
    for i, block in enumerate(blocks):
        owners = [m for m in block if any(True for _ in m.parameters(recurse=False))]
        if not isinstance(block[0], nn.Linear) or len(owners) != 1:
            raise ValueError(
                "Invalid model: counter-current learning's mirrored feedback network needs every "
                f"block to start with an nn.Linear followed by parameter-free modules; block {i} "
                f"is {block} (pass feedback= modules of your own for other layers)"
            )
    return blocks


def mirror_feedback(model: nn.Sequential) -> nn.ModuleList:
    """The feedback network mirroring an ``nn.Sequential`` of linear blocks.

    For forward blocks ``f_l = act_l(Linear(n_{l-1}, n_l))``, ``l = 1..L``, feedback module
    ``g_l`` maps layer ``l``'s space back to layer ``l - 1``'s: ``g_l = act_{l-1}(Linear(n_l,
    n_{l-1}))`` with a copy of forward block ``l - 1``'s parameter-free modules as ``act_{l-1}``
    (so ``b_{l-1}`` lives where ``a_{l-1}`` does), and ``g_1 = Linear(n_1, n_0)`` without
    activation (it pairs with the raw input). Returned in forward order ``[g_1, ..., g_L]``, on
    the model's device and dtype.
    """
    blocks = _linear_blocks(model)
    mods: list[nn.Module] = []
    for i, block in enumerate(blocks):
        lin = block[0]
        back = nn.Linear(lin.out_features, lin.in_features)
        back.to(device=lin.weight.device, dtype=lin.weight.dtype)
        if i == 0:
            mods.append(back)
        else:
            mods.append(nn.Sequential(back, *copy.deepcopy(list(blocks[i - 1][1:]))))
    return nn.ModuleList(mods)


class CounterCurrent(GradientSource):
    """Counter-current learning (CCL) for a feedforward ``nn.Sequential`` and a feedback network.

    The forward network (the model, split into blocks ``f_1..f_L`` as for DFA, see
    :func:`dfa_blocks`) processes the input; the feedback network ``g_L..g_1`` processes
    targets in the opposite direction. Every block sees its input with the gradient stopped
    (``sg``), so no gradient crosses layers, and the two networks share no parameters, so none
    crosses networks either::

        a_0 = x,        a_l     = f_l(sg(a_{l-1}))               l = 1..L
        b_L = t,        b_{l-1} = g_l(sg(b_l))                   l = L..1
        loss = loss_fn(a_L, y) + scale * sum_{l=0}^{L-1} P_l

    Each network gets the gradient of ``loss`` with respect to its own parameters: forward block
    ``l < L`` from ``P_l`` alone, the top block from the task loss alone, feedback module ``g_l``
    from ``P_{l-1}`` alone. Two pairings:

    - ``pairing="class"`` (default; classification): ``t = I_C``, the ``C`` class embeddings,
      so ``b_l`` holds one row per class; ``P_l = pair_loss(A_l B_l^T, onehot(y))`` with
      ``A_l`` the batch's ``a_l`` and ``B_l`` the classes' ``b_l``, flattened per row: each
      example's activation should have inner product 1 with its class's feedback activation and
      0 with the others'. With the default ``pair_loss`` (mean squared error)::

          grad theta_l = d/d theta_l  scale * mse(f_l(a_{l-1}) sg(B_l)^T, onehot(y))     (l < L)
          grad phi_l   = d/d phi_l    scale * mse(sg(A_{l-1}) g_l(B_l)^T, onehot(y))

    - ``pairing="example"``: ``t = embed(y)`` per example (``one_hot(y, C)`` for integer
      targets, ``y`` itself for floating-point ones: regression, autoencoders) and
      ``P_l = pair_loss(a_l, b_l)``, the difference between paired activations. With mean
      squared error this pairing admits a collapsed solution (both networks constant, every
      ``P_l = 0``); on classification it learns much less than ``"class"``.

    Kao, Hariharan, "Counter-Current Learning: A Biologically Plausible Dual Network Approach
    for Deep Learning", 2024, arXiv 2409.19841. *Reconstructed* from the abstract, the paper's
    Figure 1 (layer-wise losses on "the difference of activations from corresponding layer
    pairs", gradient detachment between layers) and the authors' released code (the ``"class"``
    pairing, the task loss on the top pair, the pair at layer 0 that trains ``g_1`` against the
    input, feedback modules with activations except ``g_1``): the mean squared error without
    the code's ``128 / width`` factor (``scale`` takes its place; irrelevant under Adam, where
    each block sees one loss), the ``"example"`` pairing, biases in the feedback layers, no
    gradient centralization or clipping (the code's defaults) and :func:`mirror_feedback`.

    Args:
        model: the forward ``nn.Sequential`` (inputs ``(batch, features)``).
        feedback: ``[g_1, ..., g_L]``, module ``g_l`` mapping layer ``l``'s activations to
            layer ``l - 1``'s; ``None`` builds :func:`mirror_feedback` (linear blocks only).
            Put ``source.feedback.parameters()`` in the optimizer too.
        pairing: ``"class"`` or ``"example"`` (above).
        scale: weight of the pair losses against the task loss (> 0).
        pair_loss: ``pair_loss(input, target) -> scalar``; default
            ``torch.nn.functional.mse_loss``.

    Cost per call: 2 forwards (the forward network on the batch, the feedback network on the
    ``C`` classes or the batch's targets), 1 backward made of layer-local backwards of both
    networks. The loss returned is ``loss_fn(model(x), y)``; ``last_layer_losses`` holds the
    pair losses ``[P_0, ..., P_{L-1}]`` (unscaled).

    >>> import torch
    >>> from torch import nn
    >>> from gradkit.sources import CounterCurrent
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    >>> source = CounterCurrent(model)
    >>> opt = torch.optim.Adam([*model.parameters(), *source.feedback.parameters()], lr=1e-2)
    >>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    >>> loss = source.compute(model, nn.functional.cross_entropy, (x, y))
    >>> opt.step()
    >>> len(source.last_layer_losses), source.feedback[1][0].weight.shape
    (2, torch.Size([8, 3]))
    """

    name = "counter_current"

    def __init__(
        self,
        model: nn.Sequential,
        feedback: Sequence[nn.Module] | None = None,
        *,
        pairing: str = "class",
        scale: float = 1.0,
        pair_loss: PairLoss | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.blocks = dfa_blocks(model)
        if feedback is None:
            self.feedback = mirror_feedback(model)
        else:
            self.feedback = nn.ModuleList(feedback)
            if len(self.feedback) != len(self.blocks):
                raise ValueError(
                    f"Invalid feedback: one module per block, {len(self.blocks)} for this model; "
                    f"got {len(self.feedback)}"
                )
        if pairing not in ("class", "example"):
            raise ValueError(f"Invalid pairing: {pairing!r}; must be 'class' or 'example'")
        self.pairing = pairing
        self.scale = check_positive_float("scale", scale)
        if pair_loss is not None and not callable(pair_loss):
            raise ValueError("Invalid pair_loss: it must be callable (input, target) -> loss")
        self.pair_loss: PairLoss = pair_loss or nn.functional.mse_loss
        self.last_layer_losses: list[Tensor] = []

    def __repr__(self) -> str:
        return (
            f"CounterCurrent(blocks={len(self.blocks)}, pairing={self.pairing!r}, "
            f"scale={self.scale})"
        )

    def embed(self, targets: Tensor, like: Tensor) -> Tensor:
        """``b_L`` for ``pairing="example"``: one-hot rows for integer targets, the targets
        themselves otherwise."""
        if targets.dtype.is_floating_point:
            return targets.to(like.dtype)
        return nn.functional.one_hot(targets.long(), like.shape[-1]).to(like.dtype)

    def _compute(
        self, model: nn.Module, loss_fn: LossFn, batch: Any, accumulate: bool
    ) -> tuple[Tensor, _Tally]:
        if model is not self.model:
            raise ValueError(
                "Invalid model: this CounterCurrent source was built for another model"
            )
        inputs, targets = split_batch(batch)
        fwd_params = [p for b in self.blocks for p in b.parameters() if p.requires_grad]
        back_params = [p for p in self.feedback.parameters() if p.requires_grad]
        with torch.enable_grad():
            acts = [inputs]
            for block in self.blocks:
                acts.append(block(acts[-1].detach()))
            out = acts[-1]
            if self.pairing == "class":
                if not isinstance(targets, Tensor) or targets.dtype.is_floating_point:
                    raise ValueError(
                        "Invalid targets: pairing='class' needs integer class labels; use "
                        "pairing='example' for other targets"
                    )
                n_cls = out.shape[-1]
                onehot = nn.functional.one_hot(targets.long(), n_cls).to(out.dtype)
                top = torch.eye(n_cls, dtype=out.dtype, device=out.device)
            else:
                top = self.embed(targets, out)
            signals = [top]
            for g in reversed(self.feedback):
                signals.append(g(signals[-1].detach()))
            signals.reverse()  # signals[l] = b_l
            loss = loss_fn(out, targets)
            if self.pairing == "class":
                pairs = [
                    self.pair_loss(a.reshape(a.shape[0], -1) @ b.reshape(b.shape[0], -1).T, onehot)
                    for a, b in zip(acts[:-1], signals[:-1])
                ]
            else:
                pairs = [self.pair_loss(a, b) for a, b in zip(acts[:-1], signals[:-1])]
            total = loss + self.scale * sum(pairs)
            wrt = fwd_params + back_params
            grads = torch.autograd.grad(total, wrt, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(wrt, grads)]
        write_grads(wrt, grads, accumulate)
        self.last_layer_losses = [p.detach() for p in pairs]
        return loss, _Tally(forward=2, backward=1)
