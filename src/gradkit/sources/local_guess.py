"""Forward gradients with local-loss guesses: project the end-to-end gradient on a direction
from a local auxiliary loss, one JVP per block.

Reconstructed from the abstract of Fournier, Rivaud, Belilovsky, Eickenberg, Oyallon, "Can
Forward Gradient Match Backpropagation?", 2023, arXiv 2306.06968 (the guess from a local loss,
the end-to-end target); see docs/gradient_sources.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp

from gradkit.sources._base import GradientSource, LossFn, _Tally, split_batch, write_grads
from gradkit.sources.dfa import dfa_blocks

__all__ = ["LocalGuessForwardGradient"]


class LocalGuessForwardGradient(GradientSource):
    """Forward gradient whose direction is a local loss's gradient instead of random noise.

    The ``nn.Sequential`` model is split into blocks as for DFA (:func:`dfa_blocks`). Each hidden
    block ``l`` has an auxiliary head (given, trained alongside) and a local loss
    ``L_l = loss_fn(head_l(h_l), targets)`` computed with the block's input held constant. Its
    gradient ``G_l = d L_l / d theta_l`` (a layer-local backward) is the *guess*; one JVP of the
    end-to-end loss ``L`` along ``G_l`` (zero on the other blocks) gives ``grad_l L . G_l``, and
    the block's estimate is the projection of the end-to-end gradient on the guess::

        g_l = (grad_l L . G_l) / ||G_l||^2 * G_l        (0 where G_l = 0)

    The output block's gradient is exact (a local backward of ``L``); each head gets the
    gradient of its local loss. Not unbiased: ``g_l`` is the component of ``grad_l L`` along
    ``G_l``, so its quality is the alignment between local and end-to-end gradients.

    Reconstructed from the abstract of Fournier, Rivaud, Belilovsky, Eickenberg, Oyallon, "Can
    Forward Gradient Match Backpropagation?", 2023, arXiv 2306.06968 ("using gradients obtained
    from a local loss as a candidate direction drastically improves on random noise in Forward
    Gradient methods"); the paper's auxiliary networks, targets and training details are not
    reproduced (here: any head the caller supplies; the end-to-end gradient as the target).

    Args:
        model: the ``nn.Sequential`` to train.
        heads: one module per hidden block, mapping the block's output to the model's output
            space (put their parameters in the optimizer too).

    Cost per call: ``B - 1`` JVPs (``B`` blocks; each evaluates the model), 1 forward,
    1 backward made of layer-local backwards (heads' forwards not counted).

    >>> import torch
    >>> from torch import nn
    >>> from gradkit.sources import LocalGuessForwardGradient
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    >>> heads = [nn.Linear(8, 3)]
    >>> source = LocalGuessForwardGradient(model, heads)
    >>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    >>> loss = source.compute(model, nn.functional.cross_entropy, (x, y))
    >>> source.last_cost.jvp, heads[0].weight.grad.shape
    (1, torch.Size([3, 8]))
    """

    name = "forward_local"

    def __init__(self, model: nn.Sequential, heads: Sequence[nn.Module]) -> None:
        super().__init__()
        self.model = model
        self.blocks = dfa_blocks(model)
        self.heads = list(heads)
        if len(self.heads) != len(self.blocks) - 1:
            raise ValueError(
                f"Invalid heads: one per hidden block, {len(self.blocks) - 1} for this model; "
                f"got {len(self.heads)}"
            )

    def __repr__(self) -> str:
        return f"LocalGuessForwardGradient(blocks={len(self.blocks)})"

    def _compute(
        self, model: nn.Module, loss_fn: LossFn, batch: Any, accumulate: bool
    ) -> tuple[Tensor, _Tally]:
        if model is not self.model:
            raise ValueError(
                "Invalid model: this LocalGuessForwardGradient source was built for another model"
            )
        inputs, targets = split_batch(batch)
        names = {id(p): n for n, p in model.named_parameters()}
        block_params = [[p for p in b.parameters() if p.requires_grad] for b in self.blocks]
        head_params = [[p for p in h.parameters() if p.requires_grad] for h in self.heads]
        with torch.enable_grad():
            outs, h = [], inputs
            for block in self.blocks:
                h = block(h.detach())
                outs.append(h)
            loss = loss_fn(outs[-1], targets)
            local = [loss_fn(head(o), targets) for head, o in zip(self.heads, outs[:-1])]
            wrt = [p for ps in block_params for p in ps] + [p for ps in head_params for p in ps]
            total = loss + sum(local) if local else loss
            grads = torch.autograd.grad(total, wrt, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(wrt, grads)]
        n_block = sum(len(ps) for ps in block_params)
        guesses, head_grads = grads[:n_block], grads[n_block:]

        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        fixed = {n: t.detach() for n, t in model.named_parameters() if not t.requires_grad}
        fixed.update(dict(model.named_buffers()))
        tnames = [n for n, _ in trainable]

        def loss_of(*ps: Tensor) -> Tensor:
            state = {**fixed, **dict(zip(tnames, ps))}
            return loss_fn(functional_call(model, state, (inputs,)), targets)

        primals = tuple(p.detach() for _, p in trainable)
        out_params: list[Tensor] = []
        out_grads: list[Tensor] = []
        start = 0
        n_jvp = 0
        with torch.no_grad():
            for i, ps in enumerate(block_params):
                guess = guesses[start : start + len(ps)]
                start += len(ps)
                if i == len(block_params) - 1:  # the output block: exact local gradient
                    estimate = list(guess)
                else:
                    by_name = {names[id(p)]: g for p, g in zip(ps, guess)}
                    tangents = tuple(by_name.get(n, torch.zeros_like(p)) for n, p in trainable)
                    _, deriv = jvp(loss_of, primals, tangents)
                    n_jvp += 1
                    norm2 = sum((g * g).sum() for g in guess)
                    scale = deriv / norm2 if float(norm2) > 0 else torch.zeros_like(deriv)
                    estimate = [g * scale for g in guess]
                out_params.extend(ps)
                out_grads.extend(estimate)
            hp = [p for ps in head_params for p in ps]
        write_grads(out_params + hp, out_grads + list(head_grads), accumulate)
        return loss, _Tally(forward=1 + n_jvp, backward=1, jvp=n_jvp)
