"""Gradient sources: what fills ``.grad`` when backpropagation is not (or not only) the answer.

A :class:`GradientSource` takes a model, a loss function ``loss_fn(output, targets)`` and a
batch ``(inputs, targets)``, writes gradient estimates into the parameters' ``.grad`` and
counts its cost (:class:`Cost`); any gradkit or ``torch.optim`` optimizer then steps unchanged.
:meth:`GradientSource.closure` builds the closure that optimizers such as SAM call.

- :class:`Backprop`: reverse-mode autodiff, the default.
- :class:`ForwardGradient`: ``(grad . v) v`` from forward-mode JVPs (Baydin et al. 2022).
- :class:`LocalGuessForwardGradient`: the end-to-end gradient projected on a local loss's
  gradient, one JVP per block (reconstructed from Fournier et al. 2023).
- :class:`ActivityPerturbedForwardGradient`: forward gradients with random directions in
  activation space, the weight gradient formed locally (Ren et al. 2022).
- :class:`ZerothOrder`: two-point randomized smoothing (Lin, Zheng, Jordan 2022).
- :class:`CounterCurrent`: a forward network on inputs and a feedback network on targets,
  paired layer-wise local losses (Kao, Hariharan 2024).
- :class:`DirectFeedbackAlignment`: fixed random feedback from the output error (Nøkland 2016).
- :class:`ForwardForward`: layer-local goodness objectives on positive/negative data (Hinton 2022).
- :class:`NoProp`: independently trained denoising blocks, discrete time (Li, Teh, Pascanu 2025).
- :class:`GeneticAlgorithm`: truncation-selection GA with seed-chain genomes (Such et al. 2017);
  a loop with ``step(loss_fn)``, not a ``.grad`` source.
- :func:`perturbed_render`: stochastic gradients through a non-differentiable renderer-like
  function, accumulated per output over an ID map (Deliot, Heitz, Belcour 2024).
- :func:`straight_through`, :func:`reinmax`, :func:`straight_through_sign`,
  :func:`reste_sign`: surrogate gradients through discrete units, as autograd functions.

See ``docs/gradient_sources.md``.

>>> import torch
>>> from torch import nn
>>> from gradkit.sources import ForwardGradient
>>> torch.manual_seed(0) and None
>>> model = nn.Linear(4, 1)
>>> x, y = torch.randn(32, 4), torch.randn(32, 1)
>>> opt = torch.optim.SGD(model.parameters(), lr=0.05)
>>> source = ForwardGradient(directions=8)
>>> closure = source.closure(model, nn.functional.mse_loss, (x, y))
>>> first = closure().item()
>>> for _ in range(100):
...     _ = opt.step(closure)
>>> nn.functional.mse_loss(model(x), y).item() < first
True
>>> source.cost.jvp  # 8 directions x 101 closure calls
808
"""

from gradkit.sources._base import Backprop, Cost, GradientSource, LossFn
from gradkit.sources.activity_forward import ActivityPerturbedForwardGradient
from gradkit.sources.counter_current import CounterCurrent, mirror_feedback
from gradkit.sources.dfa import DirectFeedbackAlignment, dfa_blocks
from gradkit.sources.discrete import reinmax, reste_sign, straight_through, straight_through_sign
from gradkit.sources.forward import ForwardGradient
from gradkit.sources.forward_forward import ForwardForward
from gradkit.sources.genetic import GeneticAlgorithm, Genome
from gradkit.sources.local_guess import LocalGuessForwardGradient
from gradkit.sources.noprop import NoProp, NoPropBlock, NoPropNet, cosine_alpha_bar
from gradkit.sources.stochastic_render import perturbed_render, perturbed_render_vjp_samples
from gradkit.sources.zeroth_order import ZerothOrder

__all__ = [
    "ActivityPerturbedForwardGradient",
    "Backprop",
    "Cost",
    "CounterCurrent",
    "DirectFeedbackAlignment",
    "ForwardForward",
    "ForwardGradient",
    "GeneticAlgorithm",
    "Genome",
    "GradientSource",
    "LocalGuessForwardGradient",
    "LossFn",
    "NoProp",
    "NoPropBlock",
    "NoPropNet",
    "ZerothOrder",
    "cosine_alpha_bar",
    "dfa_blocks",
    "mirror_feedback",
    "perturbed_render",
    "perturbed_render_vjp_samples",
    "reinmax",
    "reste_sign",
    "straight_through",
    "straight_through_sign",
]
