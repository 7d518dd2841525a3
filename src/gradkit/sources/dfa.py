"""Direct feedback alignment: fixed random projections of the output error train hidden layers.

Nøkland, "Direct Feedback Alignment Provides Learning in Deep Neural Networks", 2016,
arXiv 1609.01596 (the rule); Launay, Poli, Krzakala, "Principled Training of Neural Networks
with Direct Feedback Alignment", 2019, arXiv 1906.04554 (practice, alignment angles).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from gradkit.sources._base import GradientSource, LossFn, _Tally, split_batch, trainable

__all__ = ["DirectFeedbackAlignment", "dfa_blocks"]


def _flatten(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential):
        return [m for child in module for m in _flatten(child)]
    return [module]


def dfa_blocks(model: nn.Sequential) -> list[nn.Sequential]:
    """Split a (possibly nested) ``nn.Sequential`` into DFA blocks.

    A block starts at each module that owns parameters (a ``Linear``, a ``Conv1d``, ...) and
    takes the parameter-free modules after it (activations, pooling, flatten); leading
    parameter-free modules join the first block. The last block produces the model's output.
    """
    if not isinstance(model, nn.Sequential):
        raise ValueError(
            "Invalid model: direct feedback alignment needs an nn.Sequential (its layers are "
            f"split into blocks at each module with parameters); got {type(model).__name__}"
        )
    blocks: list[list[nn.Module]] = []
    lead: list[nn.Module] = []
    for m in _flatten(model):
        if any(True for _ in m.parameters()):
            blocks.append(lead + [m])
            lead = []
        elif blocks:
            blocks[-1].append(m)
        else:
            lead.append(m)
    if not blocks:
        raise ValueError("Invalid model: it has no module with parameters")
    if lead:
        blocks[-1].extend(lead)
    return [nn.Sequential(*b) for b in blocks]


class DirectFeedbackAlignment(GradientSource):
    """Direct feedback alignment (DFA) for sequential networks (MLPs, conv nets).

    The network is split into blocks ``h_l = f_l(W_l h_{l-1})`` (a layer with parameters and
    the parameter-free layers after it, see :func:`dfa_blocks`). With ``e = dL/dy`` the error at
    the output ``y`` (for mean cross-entropy ``(softmax(y) - onehot) / batch``), each hidden
    block receives a fixed random projection of it in place of the backpropagated signal::

        dL/dh_l  :=  e B_l            # B_l fixed, shape (outputs, numel of h_l per example)
        dW_l      =  local backward of h_l = f_l(W_l h_{l-1}) with h_{l-1} held constant

    which for ``h_l = f(a_l)``, ``a_l = W_l h_{l-1} + b_l`` is Nøkland's rule
    ``delta a_l = (e B_l) * f'(a_l)``, ``grad W_l = delta a_l^T h_{l-1}``,
    ``grad b_l = sum over the batch of delta a_l``. The last block gets ``e`` itself (its
    gradient is backprop's). No signal travels between blocks.

    Nøkland, "Direct Feedback Alignment Provides Learning in Deep Neural Networks", 2016,
    arXiv 1609.01596; Launay, Poli, Krzakala, "Principled Training of Neural Networks with
    Direct Feedback Alignment", 2019, arXiv 1906.04554.

    Reconstructed (not from the papers' text available here): the feedback matrices are drawn
    once, lazily at the first batch, with i.i.d. ``N(0, 1 / outputs)`` entries.

    Args:
        model: the ``nn.Sequential`` to train (inputs with a leading batch dimension).
        generator: ``torch.Generator`` for the feedback matrices (CPU); ``None`` uses the global
            generator.

    Cost per call: 1 forward, 1 backward made of layer-local backwards (no transport between
    layers). ``feedback`` holds the matrices ``B_l`` after the first call.

    >>> import torch
    >>> from torch import nn
    >>> from gradkit.sources import DirectFeedbackAlignment
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    >>> source = DirectFeedbackAlignment(model, generator=torch.Generator().manual_seed(0))
    >>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    >>> loss = source.compute(model, nn.functional.cross_entropy, (x, y))
    >>> [tuple(b.shape) for b in source.feedback]
    [(3, 8)]
    """

    name = "dfa"

    def __init__(self, model: nn.Sequential, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.model = model
        self.blocks = dfa_blocks(model)
        self.generator = generator
        self.feedback: list[Tensor] = []

    def __repr__(self) -> str:
        return f"DirectFeedbackAlignment(blocks={len(self.blocks)})"

    def _make_feedback(self, error: Tensor, hidden: list[Tensor]) -> None:
        n_out = error[0].numel()
        self.feedback = [
            (
                torch.randn(n_out, h[0].numel(), generator=self.generator, dtype=torch.float64)
                / n_out**0.5
            ).to(device=h.device, dtype=h.dtype)
            for h in hidden
        ]

    def _compute(
        self, model: nn.Module, loss_fn: LossFn, batch: Any, accumulate: bool
    ) -> tuple[Tensor, _Tally]:
        if model is not self.model:
            raise ValueError(
                "Invalid model: this DirectFeedbackAlignment source was built for another model"
            )
        inputs, targets = split_batch(batch)
        with torch.enable_grad():
            outs = []
            h = inputs
            for block in self.blocks:
                h = block(h.detach())
                outs.append(h)
            output = outs[-1].detach().requires_grad_(True)
            loss = loss_fn(output, targets)
            (error,) = torch.autograd.grad(loss, output)
            hidden = outs[:-1]
            if len(self.feedback) != len(hidden) or any(
                b.shape[1] != h[0].numel() for b, h in zip(self.feedback, hidden)
            ):
                self._make_feedback(error, hidden)
            flat = error.reshape(error.shape[0], -1)
            signals = [(flat @ b).reshape(h.shape) for b, h in zip(self.feedback, hidden)]
            if not accumulate:
                for _, p in trainable(model):
                    p.grad = None
            pairs = [(o, s) for o, s in zip(outs, signals + [error]) if o.requires_grad]
            if pairs:
                torch.autograd.backward([o for o, _ in pairs], [s for _, s in pairs])
        return loss, _Tally(forward=1, backward=1)
