"""Forward-Forward: every layer trains on its own goodness objective, no backward transport.

Hinton, "The Forward-Forward Algorithm: Some Preliminary Investigations", 2022, arXiv 2212.13345.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.functional import one_hot, softplus

from gradkit.errors import invalid_value
from gradkit.sources._base import GradientSource, LossFn, _Tally, split_batch, trainable
from gradkit.sources.dfa import dfa_blocks

__all__ = ["ForwardForward"]

_EMBEDDINGS = ("concat", "replace")


def _unused(output: Any, targets: Any) -> Tensor:  # stands in for loss_fn=None
    raise AssertionError("not called")


class ForwardForward(GradientSource):
    """Forward-Forward (FF) for a stack of fully connected layers.

    The ``nn.Sequential`` model is split into layers ``h_l = f(W_l x_l + b_l)`` (a module with
    parameters and the parameter-free modules after it, as in :func:`dfa_blocks`). The label is
    embedded in the input as a one-hot vector: *positive* data carry the true label, *negative*
    data the same input with a wrong label drawn uniformly from the others. Between layers the
    activity vector is normalized to unit length, so a layer sees only the direction of the one
    below, not its goodness::

        x_1 = embed(input, label),   x_{l+1} = h_l / (||h_l|| + eps)     (held constant)
        goodness  G_l = sum_j h_{l,j}^2
        loss_l    = mean_pos softplus(theta_l - G_l) + mean_neg softplus(G_l - theta_l)

    i.e. the logistic loss of ``p(positive) = sigmoid(G_l - theta_l)``. Each layer's parameters
    get the gradient of its own ``loss_l`` with its input ``x_l`` held constant (a layer-local
    backward); nothing travels between layers. A label is predicted (:meth:`predict`) by
    running the input with every label embedded and taking the label with the largest goodness
    accumulated over all layers.

    Hinton, "The Forward-Forward Algorithm: Some Preliminary Investigations", 2022,
    arXiv 2212.13345.

    *Reconstructed* (the abstract states the goodness and the positive/negative passes; the
    rest follows the paper's supervised MNIST recipe as commonly described, not its text):
    the logistic loss, length normalization with ``eps = 1e-8``, the one-hot label embedding
    (``"replace"`` overwrites the first ``num_classes`` input features, as the paper does with
    the border pixels of MNIST images; ``"concat"`` appends it, for inputs with no unused
    features), the default threshold, and
    prediction by goodness summed over all layers.

    Args:
        model: ``nn.Sequential`` of layers with parameters (``Linear``) and activations; its
            first layer takes the embedded input (``features + num_classes`` wide for
            ``"concat"``).
        num_classes: number of labels (>= 2).
        threshold: ``theta``, the same for every layer (default 2.0: on MNIST-1D thresholds
            from 2 to 10 did equally well and the layer's width, mean squared activity 1, did
            much worse).
        embedding: ``"concat"`` (default) or ``"replace"``.
        generator: ``torch.Generator`` for the wrong labels; ``None`` uses the global one.

    ``compute(model, loss_fn, (inputs, targets))`` ignores ``loss_fn`` (FF has its own
    objective) and returns the sum of the layer losses. Cost per call: 2 forwards (positive and
    negative data), 1 backward made of layer-local backwards.

    >>> import torch
    >>> from torch import nn
    >>> from gradkit.sources import ForwardForward
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(6 + 3, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
    >>> source = ForwardForward(model, num_classes=3, generator=torch.Generator().manual_seed(0))
    >>> x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    >>> loss = source.compute(model, None, (x, y))
    >>> len(source.last_layer_losses), source.last_cost.forward, source.last_cost.backward
    (2, 2, 1)
    >>> source.predict(x).shape
    torch.Size([8])
    """

    name = "forward_forward"
    eps = 1e-8

    def __init__(
        self,
        model: nn.Sequential,
        num_classes: int,
        *,
        threshold: float = 2.0,
        embedding: str = "concat",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise invalid_value("num_classes", num_classes, "an integer >= 2")
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, (int, float))
            or not math.isfinite(threshold)
        ):
            raise invalid_value("threshold", threshold, "a finite number")
        if embedding not in _EMBEDDINGS:
            raise invalid_value("embedding", embedding, f"one of {_EMBEDDINGS}")
        self.model = model
        self.blocks = dfa_blocks(model)
        self.num_classes = num_classes
        self.threshold = float(threshold)
        self.embedding = embedding
        self.generator = generator
        self.last_layer_losses: list[Tensor] = []
        self.last_negative_labels: Tensor | None = None

    def __repr__(self) -> str:
        return (
            f"ForwardForward(layers={len(self.blocks)}, num_classes={self.num_classes}, "
            f"threshold={self.threshold}, embedding={self.embedding!r})"
        )

    def embed(self, inputs: Tensor, labels: Tensor) -> Tensor:
        """The input with the one-hot label embedded (flattened to ``(batch, features)``)."""
        x = inputs.reshape(inputs.shape[0], -1)
        code = one_hot(labels, self.num_classes).to(dtype=x.dtype, device=x.device)
        if self.embedding == "concat":
            return torch.cat([x, code], dim=1)
        if x.shape[1] < self.num_classes:
            raise ValueError(
                f"Invalid inputs: embedding='replace' needs at least num_classes="
                f"{self.num_classes} features; got {x.shape[1]}"
            )
        return torch.cat([code, x[:, self.num_classes :]], dim=1)

    def wrong_labels(self, labels: Tensor) -> Tensor:
        """A label different from each true one, uniform over the others (drawn on the CPU)."""
        shift = torch.randint(1, self.num_classes, labels.shape, generator=self.generator)
        return (labels + shift.to(labels.device)) % self.num_classes

    def layer_activities(self, x: Tensor, *, detach: bool = True) -> list[Tensor]:
        """Each layer's activity ``h_l`` for an embedded input ``x``; with ``detach`` (default)
        each layer's input is held constant, so gradients stay inside the layer."""
        acts = []
        h = x
        for i, block in enumerate(self.blocks):
            inp = h if i == 0 else h / (h.norm(dim=1, keepdim=True) + self.eps)
            out = block(inp.detach() if detach else inp)
            acts.append(out)
            h = out.reshape(out.shape[0], -1)
        return acts

    def goodness(self, inputs: Tensor) -> Tensor:
        """``(batch, num_classes)``: goodness summed over layers with each label embedded."""
        n = inputs.shape[0]
        scores = []
        with torch.no_grad():
            for c in range(self.num_classes):
                labels = torch.full((n,), c, dtype=torch.long, device=inputs.device)
                acts = self.layer_activities(self.embed(inputs, labels))
                scores.append(sum(a.reshape(n, -1).pow(2).sum(1) for a in acts))
        return torch.stack(scores, dim=1)

    def predict(self, inputs: Tensor) -> Tensor:
        """The label with the largest accumulated goodness (``num_classes`` forwards)."""
        return self.goodness(inputs).argmax(dim=1)

    def compute(
        self, model: nn.Module, loss_fn: LossFn | None, batch: Any, *, accumulate: bool = False
    ) -> Tensor:
        """Fill ``p.grad`` with each layer's local FF gradient; return the summed layer loss.
        ``loss_fn`` is not used (``None`` is accepted)."""
        return super().compute(
            model, _unused if loss_fn is None else loss_fn, batch, accumulate=accumulate
        )

    def _compute(
        self, model: nn.Module, loss_fn: LossFn, batch: Any, accumulate: bool
    ) -> tuple[Tensor, _Tally]:
        if model is not self.model:
            raise ValueError(
                "Invalid model: this ForwardForward source was built for another model"
            )
        inputs, labels = split_batch(batch)
        negative = self.wrong_labels(labels)
        self.last_negative_labels = negative
        if not accumulate:
            for _, p in trainable(model):
                p.grad = None
        with torch.enable_grad():
            pos = self.layer_activities(self.embed(inputs, labels))
            neg = self.layer_activities(self.embed(inputs, negative))
            losses = []
            for hp, hn in zip(pos, neg):
                theta = self.threshold
                gp = hp.reshape(hp.shape[0], -1).pow(2).sum(1)
                gn = hn.reshape(hn.shape[0], -1).pow(2).sum(1)
                losses.append(softplus(theta - gp).mean() + softplus(gn - theta).mean())
            total = torch.stack(losses).sum()
            if total.requires_grad:
                total.backward()
        self.last_layer_losses = [v.detach() for v in losses]
        return total, _Tally(forward=2, backward=1)
