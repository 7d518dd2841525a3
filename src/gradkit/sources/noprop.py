"""NoProp (discrete time): each block learns, on its own, to denoise a noised label embedding.

Li, Teh, Pascanu, "NoProp: Training Neural Networks without Back-propagation or
Forward-propagation", 2025, arXiv 2503.24369.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.functional import cross_entropy, one_hot, softmax

from gradkit.errors import invalid_value
from gradkit.sources._base import GradientSource, LossFn, _Tally, split_batch, trainable

__all__ = ["NoProp", "NoPropBlock", "NoPropNet", "cosine_alpha_bar"]


def cosine_alpha_bar(steps: int, *, floor: float = 1e-3) -> Tensor:
    """``alpha_bar_t = sin^2(pi t / (2 T))`` for ``t = 0..T``, clipped to ``[floor, 1 - floor]``
    (float64): ``t = 0`` is (almost) pure noise, ``t = T`` (almost) the clean label."""
    t = torch.arange(steps + 1, dtype=torch.float64)
    return torch.sin(math.pi * t / (2 * steps)).pow(2).clamp(floor, 1 - floor)


class NoPropBlock(nn.Module):
    """A denoising block ``u_t(z, x) -> logits over classes``: an MLP on ``[x, z]``."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features + num_classes, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return self.net(torch.cat([x.reshape(x.shape[0], -1), z], dim=1))


class NoPropNet(nn.Module):
    """``T`` denoising blocks, a fixed one-hot label embedding and an output classifier.

    Block ``t`` (``t = 1..T``) maps the input ``x`` and a noisy label embedding ``z_{t-1}`` to
    logits; its prediction of the clean embedding is ``u_hat_t = softmax(logits) W`` with ``W``
    the embedding (here the identity: one-hot labels). Inference runs the chain from
    ``z_0 = 0`` (the mean of ``N(0, I)``) through the Gaussian posterior of the noising process::

        z_t = a_t u_hat_t(z_{t-1}, x) + b_t z_{t-1}  (+ sqrt(c_t) eps_t when sampling)
        a_t = sqrt(A) (1 - B/A) / (1 - B),  b_t = sqrt(B/A) (1 - A) / (1 - B),
        c_t = (1 - A)(1 - B/A) / (1 - B),   A = alpha_bar_t,  B = alpha_bar_{t-1}

    and ``forward(x)`` returns the classifier's logits ``classifier(z_T)``.

    Args:
        blocks: ``T`` modules ``block(x, z) -> (batch, num_classes)`` logits.
        num_classes: number of labels.
        alpha_bar: ``T + 1`` values, increasing, in ``(0, 1)``; default
            :func:`cosine_alpha_bar`.
        classifier: ``p(y | z_T)``; default ``nn.Linear(num_classes, num_classes)``.
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        num_classes: int,
        *,
        alpha_bar: Tensor | None = None,
        classifier: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise invalid_value("num_classes", num_classes, "an integer >= 2")
        if len(blocks) < 1:
            raise invalid_value("blocks", list(blocks), "a non-empty sequence of modules")
        self.blocks = nn.ModuleList(blocks)
        self.num_classes = num_classes
        steps = len(blocks)
        ab = cosine_alpha_bar(steps) if alpha_bar is None else torch.as_tensor(alpha_bar)
        ab = ab.to(torch.float64)
        if (
            ab.shape != (steps + 1,)
            or not bool(((ab > 0) & (ab < 1)).all())
            or not bool((ab[1:] > ab[:-1]).all())
        ):
            raise invalid_value(
                "alpha_bar", ab.tolist(), f"{steps + 1} increasing values in (0, 1)"
            )
        self.register_buffer("alpha_bar", ab, persistent=False)
        self.classifier = nn.Linear(num_classes, num_classes) if classifier is None else classifier

    @classmethod
    def mlp(
        cls, in_features: int, num_classes: int, steps: int = 10, hidden: int = 128
    ) -> NoPropNet:
        """``steps`` :class:`NoPropBlock` MLPs and a linear classifier."""
        return cls(
            [NoPropBlock(in_features, num_classes, hidden) for _ in range(steps)], num_classes
        )

    @property
    def steps(self) -> int:
        return len(self.blocks)

    def embedding(self, labels: Tensor, like: Tensor) -> Tensor:
        """``u_y``: the one-hot embedding of the labels, dtype and device of ``like``."""
        return one_hot(labels, self.num_classes).to(dtype=like.dtype, device=like.device)

    def denoise(self, t: int, x: Tensor, z: Tensor) -> Tensor:
        """Block ``t``'s prediction of the clean embedding, ``softmax(block_t(x, z)) W``."""
        return softmax(self.blocks[t - 1](x, z), dim=1)  # W = identity (one-hot embedding)

    def coefficients(self, t: int) -> tuple[float, float, float]:
        """``(a_t, b_t, c_t)`` of the inference step ``z_{t-1} -> z_t``."""
        a, b = float(self.alpha_bar[t]), float(self.alpha_bar[t - 1])
        return (
            math.sqrt(a) * (1 - b / a) / (1 - b),
            math.sqrt(b / a) * (1 - a) / (1 - b),
            (1 - a) * (1 - b / a) / (1 - b),
        )

    def forward(
        self, x: Tensor, *, generator: torch.Generator | None = None, sample: bool = False
    ) -> Tensor:
        ref = next(self.classifier.parameters(), None)
        dtype = ref.dtype if ref is not None else x.dtype
        z = torch.zeros(x.shape[0], self.num_classes, dtype=dtype, device=x.device)
        if sample:
            z = torch.randn(z.shape, generator=generator, dtype=dtype).to(x.device)
        for t in range(1, self.steps + 1):
            a, b, c = self.coefficients(t)
            z = a * self.denoise(t, x, z) + b * z
            if sample:
                z = z + math.sqrt(c) * torch.randn(z.shape, generator=generator, dtype=dtype).to(
                    x.device
                )
        return self.classifier(z)


class NoProp(GradientSource):
    """NoProp, discrete time (NoProp-DT): every block trains on its own denoising loss.

    For a batch ``(x, y)`` with clean label embeddings ``u_y`` and the noising process
    ``q(z_t | y) = N(sqrt(alpha_bar_t) u_y, (1 - alpha_bar_t) I)``, block ``t`` receives a
    sample ``z_{t-1}`` drawn *directly from* ``q(z_{t-1} | y)``, not the previous block's
    output, so no signal travels between blocks in either direction::

        loss_t   = eta / 2 (SNR(t) - SNR(t-1)) mean_batch || u_hat_t(z_{t-1}, x) - u_y ||^2
        loss_out = mean_batch cross_entropy(classifier(z_T), y),  z_T ~ q(z_T | y)
        SNR(t)   = alpha_bar_t / (1 - alpha_bar_t)

    Each block's ``.grad`` is the gradient of its own ``loss_t``, the classifier's that of
    ``loss_out``. Summing ``loss_t`` over the ``T`` blocks equals the paper's
    ``T eta / 2 E_{t ~ U{1..T}} [...]`` term exactly (every ``t`` is used every step).

    Li, Teh, Pascanu, "NoProp: Training Neural Networks without Back-propagation or
    Forward-propagation", 2025, arXiv 2503.24369.

    *Reconstructed from the abstract* (which states only that each layer independently learns
    to denoise a noisy target fixed beforehand): the loss above, the schedule
    (:func:`cosine_alpha_bar`), the fixed one-hot embedding (the paper also learns it; here
    the KL term it brings is constant and dropped), the block architecture
    (:class:`NoPropBlock`), the deterministic inference path from ``z_0 = 0`` and ``eta = 0.1``.

    Args:
        model: the :class:`NoPropNet` to train.
        eta: weight of the denoising losses (> 0).
        generator: ``torch.Generator`` (CPU) for the noise; ``None`` uses the global one. One
            draw per call, ``randn(T + 1, batch, num_classes)``: slice ``t - 1`` noises
            ``z_{t-1}`` for block ``t``, slice ``T`` noises ``z_T`` for the classifier.

    ``compute(model, loss_fn, (x, y))`` ignores ``loss_fn`` (``None`` is accepted) and returns
    ``sum_t loss_t + loss_out``. Cost per call: 1 forward (each block evaluated once on its own
    input), 1 backward made of block-local backwards.

    >>> import torch
    >>> from gradkit.sources import NoProp, NoPropNet
    >>> torch.manual_seed(0) and None
    >>> net = NoPropNet.mlp(in_features=6, num_classes=3, steps=4, hidden=16)
    >>> source = NoProp(net, generator=torch.Generator().manual_seed(0))
    >>> x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    >>> loss = source.compute(net, None, (x, y))
    >>> len(source.last_block_losses), net(x).shape
    (4, torch.Size([8, 3]))
    """

    name = "noprop"

    def __init__(
        self, model: NoPropNet, *, eta: float = 0.1, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        if not isinstance(model, NoPropNet):
            raise ValueError(
                f"Invalid model: NoProp trains a NoPropNet; got {type(model).__name__}"
            )
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not (0 < eta < math.inf):
            raise invalid_value("eta", eta, "a finite number > 0")
        self.model = model
        self.eta = float(eta)
        self.generator = generator
        self.last_block_losses: list[Tensor] = []
        self.last_output_loss: Tensor | None = None

    def __repr__(self) -> str:
        return f"NoProp(steps={self.model.steps}, eta={self.eta})"

    def weights(self) -> Tensor:
        """``eta / 2 (SNR(t) - SNR(t-1))`` for ``t = 1..T`` (float64)."""
        ab = self.model.alpha_bar
        snr = ab / (1 - ab)
        return self.eta / 2 * (snr[1:] - snr[:-1])

    def compute(
        self, model: nn.Module, loss_fn: LossFn | None, batch: Any, *, accumulate: bool = False
    ) -> Tensor:
        """Fill ``p.grad`` with each block's local gradient; return the summed loss.
        ``loss_fn`` is not used (``None`` is accepted)."""
        fn = cross_entropy if loss_fn is None else loss_fn
        return super().compute(model, fn, batch, accumulate=accumulate)

    def _compute(
        self, model: nn.Module, loss_fn: LossFn, batch: Any, accumulate: bool
    ) -> tuple[Tensor, _Tally]:
        if model is not self.model:
            raise ValueError("Invalid model: this NoProp source was built for another model")
        net = self.model
        x, y = split_batch(batch)
        ref = next(net.classifier.parameters(), None)
        dtype = ref.dtype if ref is not None else x.dtype
        u = net.embedding(y, torch.empty((), dtype=dtype, device=x.device))
        steps = net.steps
        noise = torch.randn(
            (steps + 1, *u.shape), generator=self.generator, dtype=torch.float64
        ).to(dtype=dtype, device=x.device)
        ab = net.alpha_bar.tolist()
        w = self.weights().tolist()

        def noised(t: int) -> Tensor:
            return math.sqrt(ab[t]) * u + math.sqrt(1 - ab[t]) * noise[t]

        if not accumulate:
            for _, p in trainable(model):
                p.grad = None
        with torch.enable_grad():
            block_losses = []
            for t in range(1, steps + 1):
                err = net.denoise(t, x, noised(t - 1)) - u
                block_losses.append(w[t - 1] * err.pow(2).sum(1).mean())
            out_loss = cross_entropy(net.classifier(noised(steps)), y)
            total = torch.stack(block_losses).sum() + out_loss
            if total.requires_grad:
                total.backward()
        self.last_block_losses = [v.detach() for v in block_losses]
        self.last_output_loss = out_loss.detach()
        return total, _Tally(forward=1, backward=1)
