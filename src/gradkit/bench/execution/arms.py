"""The training step of a comparison arm that is not plain backprop: a gradient source
(:mod:`gradkit.sources`) filling ``.grad``, or a multi-task aggregator (:mod:`gradkit.multigrad`).

:func:`build_arm` takes the task's freshly built model and returns an :class:`Arm`: what the
optimizer trains, what the task's ``evaluate`` scores, and ``compute(batch)``, which fills
``.grad`` and returns the loss. Sources that need a particular model say why they do not apply
(:class:`ArmError`, a ``ValueError``); :func:`check_arm` runs that check before any training.

Sources call ``data.loss_fn(model(inputs), targets)`` on batches ``(inputs, targets)``: a task's
data must have ``loss_fn`` for any source but backprop (:class:`ClassificationData` has it:
cross-entropy). Forward-Forward and NoProp train their own nets, built from the task's MLP
(an ``nn.Sequential`` of ``Linear`` layers and parameter-free modules): Forward-Forward takes its
hidden widths and input size plus the classes (the label is concatenated to the input) and
predicts by goodness; NoProp takes 10 denoising blocks of the MLP's first hidden width.

Random draws of a source (directions, DFA's feedback matrices, FF's negative labels, NoProp's
noise, PCGrad's orders) come from a generator seeded with ``40_000 + seed``; the initial weights
of what an arm adds (the local heads of ``forward_local``, the counter-current feedback network,
the own nets of Forward-Forward and NoProp) come from the global generator, which the training
run seeds with ``seed`` first. So an arm's run is a function of its seed, like the batches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gradkit.bench.protocol.sources import SourceChoice
from gradkit.bench.tasks.interface import Task

__all__ = ["Arm", "ArmError", "build_arm", "check_arm", "mlp_linears"]


class ArmError(ValueError):
    """A source or aggregator that cannot run on a task; the message says why."""


@dataclass
class Arm:
    """A model trained by a source or an aggregator.

    ``trained``: the module whose parameters the optimizer gets (the model, plus local heads
    for ``forward_local``); ``scored``: what ``data.evaluate`` is given; ``compute(batch)``:
    fills ``.grad`` (after the caller's ``zero_grad``) and returns the detached loss;
    ``passes()``: forward, backward and JVP passes so far.
    """

    trained: nn.Module
    scored: nn.Module
    compute: Callable[[Any], torch.Tensor]
    passes: Callable[[], dict[str, int]]
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def mlp_linears(model: nn.Module) -> list[nn.Linear] | None:
    """The ``Linear`` layers of an MLP (an ``nn.Sequential`` whose modules with parameters are
    all ``Linear``), or None when the model is not one."""
    if not isinstance(model, nn.Sequential):
        return None

    def flat(module: nn.Module) -> list[nn.Module]:
        if isinstance(module, nn.Sequential):
            return [m for child in module for m in flat(child)]
        return [module]

    linears = []
    for m in flat(model):
        if isinstance(m, nn.Linear):
            linears.append(m)
        elif any(True for _ in m.parameters(recurse=False)) or len(list(m.children())):
            return None
    return linears if len(linears) >= 2 else None


def _loss_fn(task: Task, data: Any, source: str) -> Callable[[Any, Any], torch.Tensor]:
    fn = getattr(data, "loss_fn", None)
    if not callable(fn):
        raise ArmError(
            f"the {source} source needs the task's data to define loss_fn(output, targets) on "
            f"batches (inputs, targets); {task.name}'s {type(data).__name__} does not"
        )
    return fn


def _classes(task: Task, data: Any, linears: list[nn.Linear] | None, source: str) -> int:
    from gradkit.bench.tasks.classification import ClassificationData

    if not isinstance(data, ClassificationData) or linears is None:
        what = (
            f"its data is a {type(data).__name__}, not classification"
            if not isinstance(data, ClassificationData)
            else "its model is not an nn.Sequential MLP (Linear layers and parameter-free "
            "modules only)"
        )
        raise ArmError(
            f"the {source} source trains its own MLP built from the task's MLP on a "
            f"classification task; {task.name}: {what}"
        )
    return linears[-1].out_features


class _Goodness(nn.Module):
    """Scores a Forward-Forward net: the goodness of each label, summed over layers, as logits
    (so the task's accuracy is the accuracy of prediction by goodness)."""

    def __init__(self, net: nn.Sequential, source: Any) -> None:
        super().__init__()
        self.net = net
        self._source = source

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self._source.goodness(x)


def _for_model(task: Task, source: SourceChoice, build: Callable[[], Any]) -> Any:
    """``build()``, a source (or its blocks) made for the task's model; the ValueError of a
    model it cannot take becomes an :class:`ArmError` naming the source and the task."""
    try:
        return build()
    except ValueError as exc:
        raise ArmError(
            f"the {source.name} source cannot train {task.name}'s model: {exc}"
        ) from None


def _cost(source: Any) -> Callable[[], dict[str, int]]:
    def passes() -> dict[str, int]:
        c = source.cost
        return {"forward": c.forward, "backward": c.backward, "jvp": c.jvp}

    return passes


def _aggregator(name: str, model: nn.Module, data: Any, seed: int) -> Any:
    from gradkit import multigrad

    if name == "sum":
        return multigrad.Sum()
    if name == "mean":
        return multigrad.Mean()
    if name == "pcgrad":
        return multigrad.PCGrad(generator=torch.Generator().manual_seed(40_000 + seed))
    if name == "mgda":
        return multigrad.MGDA()
    if name == "upgrad":
        return multigrad.UPGrad()
    if name == "gradnorm":
        if not callable(getattr(data, "last_shared_layer", None)):
            raise ArmError(
                "gradnorm balances the task gradients' norms on the last shared layer: the "
                f"task's data ({type(data).__name__}) must define last_shared_layer(model)"
            )
        return multigrad.GradNorm(list(data.last_shared_layer(model)))
    raise ArmError(f"unknown aggregator {name!r}")


def build_arm(
    task: Task,
    data: Any,
    model: nn.Module,
    *,
    source: SourceChoice | None = None,
    aggregator: str | None = None,
    seed: int = 0,
    device: torch.device | None = None,
) -> Arm:
    """The arm training ``model`` (the task's, just built) with ``source`` or ``aggregator``;
    raises :class:`ArmError` when it does not apply to the task."""
    device = device or torch.device("cpu")
    if aggregator is not None:
        if source is not None and not source.is_backprop:
            raise ArmError(
                f"{task.name} is multi-task: its per-task gradients come from backprop, so "
                f"the {source.name} source does not apply (use --source backprop)"
            )
        if not callable(getattr(data, "task_losses", None)):
            raise ArmError(
                f"--aggregator needs a multi-task task (data with task_losses); {task.name} "
                "has one loss"
            )
        from gradkit import multigrad

        agg = _aggregator(aggregator, model, data, seed)
        everything = aggregator == "gradnorm"
        shared = list(model.parameters()) if everything else list(data.shared_parameters(model))
        ids = {id(p) for p in shared}
        own = [p for p in model.parameters() if id(p) not in ids]
        count = {"forward": 0, "backward": 0, "jvp": 0}

        def compute_mt(batch: Any) -> torch.Tensor:
            losses = data.task_losses(model, batch)
            multigrad.backward(losses, agg, shared_params=shared, task_params=own)
            count["forward"] += 1
            count["backward"] += len(losses)
            return torch.stack([v.detach() for v in losses]).sum()

        return Arm(model, model, compute_mt, lambda: dict(count))
    if source is None or source.is_backprop:
        raise ArmError("backprop needs no arm: the training loop calls loss.backward()")
    if callable(getattr(data, "task_losses", None)):
        raise ArmError(
            f"{task.name} is multi-task: its per-task gradients come from backprop, so the "
            f"{source.name} source does not apply (use --source backprop)"
        )
    from gradkit import sources

    dev_gen = torch.Generator(device=device).manual_seed(40_000 + seed)
    cpu_gen = torch.Generator().manual_seed(40_000 + seed)
    kind = source.kind
    if kind in ("forward", "zeroth_order"):
        loss_fn = _loss_fn(task, data, source.name)
        src = (
            sources.ForwardGradient(source.directions or 1, generator=dev_gen)
            if kind == "forward"
            else sources.ZerothOrder(1e-3, source.directions or 1, generator=dev_gen)
        )
        return Arm(model, model, lambda b: src.compute(model, loss_fn, b), _cost(src))
    if kind in ("dfa", "forward_local"):
        loss_fn = _loss_fn(task, data, source.name)
        if kind == "dfa":
            src = _for_model(
                task, source, lambda: sources.DirectFeedbackAlignment(model, generator=cpu_gen)
            )
            return Arm(model, model, lambda b: src.compute(model, loss_fn, b), _cost(src))
        blocks = _for_model(task, source, lambda: sources.dfa_blocks(model))
        with torch.no_grad():
            x, _ = data.sample_batch(torch.Generator().manual_seed(0), 2)
            outs = []
            h = x
            for block in blocks:
                h = block(h)
                outs.append(h)
        n_out = outs[-1][0].numel()
        heads = [
            nn.Sequential(nn.Flatten(), nn.Linear(h[0].numel(), n_out)).to(device)
            for h in outs[:-1]
        ]
        src = sources.LocalGuessForwardGradient(model, heads)
        trained = nn.ModuleList([model, *heads])
        return Arm(trained, model, lambda b: src.compute(model, loss_fn, b), _cost(src))
    if kind in ("forward_activity", "counter_current"):
        loss_fn = _loss_fn(task, data, source.name)
        if kind == "counter_current":
            _classes(task, data, mlp_linears(model), source.name)
        if kind == "forward_activity":
            src = _for_model(
                task,
                source,
                lambda: sources.ActivityPerturbedForwardGradient(
                    model, source.directions or 1, generator=dev_gen
                ),
            )
            return Arm(model, model, lambda b: src.compute(model, loss_fn, b), _cost(src))
        src = _for_model(task, source, lambda: sources.CounterCurrent(model))
        trained = nn.ModuleList([model, src.feedback])  # the feedback network learns too
        return Arm(trained, model, lambda b: src.compute(model, loss_fn, b), _cost(src))
    linears = mlp_linears(model)
    classes = _classes(task, data, linears, source.name)
    in_features = int(data.x_train[0].numel())
    if kind == "forward_forward":
        widths = [lin.out_features for lin in linears[:-1]]
        layers: list[nn.Module] = []
        prev = in_features + classes
        for w in widths:
            layers += [nn.Linear(prev, w), nn.ReLU()]
            prev = w
        net = nn.Sequential(*layers).to(device)
        src = sources.ForwardForward(net, classes, generator=cpu_gen)
        return Arm(net, _Goodness(net, src), lambda b: src.compute(net, None, b), _cost(src))
    if kind == "noprop":
        net = sources.NoPropNet.mlp(
            in_features, classes, steps=10, hidden=linears[0].out_features
        ).to(device)
        src = sources.NoProp(net, eta=0.1, generator=cpu_gen)
        return Arm(net, net, lambda b: src.compute(net, None, b), _cost(src))
    raise ArmError(f"unknown gradient source {source.name!r}")


def check_arm(
    task: Task,
    *,
    source: SourceChoice | None = None,
    aggregator: str | None = None,
    device: torch.device | None = None,
) -> None:
    """Raise :class:`ArmError` when ``source``/``aggregator`` cannot train ``task`` (builds the
    task's model and the arm once, trains nothing)."""
    if aggregator is None and (source is None or source.is_backprop):
        return
    device = device or torch.device("cpu")
    data = task.load_data(device)
    rng = torch.random.get_rng_state()
    try:
        model = task.build_model().to(device)
        build_arm(task, data, model, source=source, aggregator=aggregator, device=device)
    finally:
        torch.random.set_rng_state(rng)
