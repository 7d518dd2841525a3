"""Gradient sources and multi-task aggregators as comparison dimensions of ``gradkit compare``.

``--source backprop,forward,dfa`` trains every optimizer with every listed gradient source
(:mod:`gradkit.sources`): the source fills ``.grad`` in place of ``loss.backward()``. Each
(optimizer, source) pair is a trial arm with its own study. ``--aggregator sum,pcgrad,upgrad``
does the same for multi-task tasks with the aggregators of :mod:`gradkit.multigrad`.

A source is named ``NAME`` or ``NAME:K`` where ``K`` is the number of random directions
(forward gradient, activity-perturbed forward gradient and zeroth order). This module only names and parses; building a source
for a model is :mod:`gradkit.bench.execution.arms`.
"""

from __future__ import annotations

from dataclasses import dataclass

from gradkit.errors import canonical_name

__all__ = [
    "AGGREGATORS",
    "SOURCES",
    "SourceChoice",
    "parse_aggregators",
    "parse_sources",
]

#: Gradient sources by name: the :mod:`gradkit.sources` class each maps to, and what it needs.
SOURCES: dict[str, str] = {
    "backprop": "Backprop: loss.backward() (any task)",
    "forward": "ForwardGradient(directions=K, default 1): K JVPs per step (any task with a "
    "loss on (output, targets))",
    "forward_local": "LocalGuessForwardGradient: local-loss guesses with a linear head per "
    "hidden block (tasks whose model is an nn.Sequential)",
    "forward_activity": "ActivityPerturbedForwardGradient(directions=K, default 1): the "
    "directional derivatives taken on each linear block's activations, K JVPs per block (one "
    "JVP covers the batch; tasks whose model is an nn.Sequential of Linear blocks)",
    "counter_current": "CounterCurrent: a mirrored feedback network on the targets, layer-local "
    "pair losses (classification tasks whose model is an nn.Sequential of Linear blocks)",
    "zeroth_order": "ZerothOrder(delta=1e-3, directions=K, default 1): 2K forwards per step "
    "(any task with a loss on (output, targets))",
    "dfa": "DirectFeedbackAlignment (tasks whose model is an nn.Sequential)",
    "forward_forward": "ForwardForward: its own layer-local MLP with the task MLP's hidden "
    "widths, label concatenated to the input, prediction by goodness (classification tasks "
    "whose model is an nn.Sequential MLP)",
    "noprop": "NoProp: its own net of 10 denoising MLP blocks with the task MLP's first hidden "
    "width (classification tasks whose model is an nn.Sequential MLP)",
}

_ALIASES = {
    "bp": "backprop",
    "fg": "forward",
    "forwardgradient": "forward",
    "localguess": "forward_local",
    "zo": "zeroth_order",
    "zerothorder": "zeroth_order",
    "directfeedbackalignment": "dfa",
    "ff": "forward_forward",
    "activity": "forward_activity",
    "ccl": "counter_current",
}

#: Sources that take a number of random directions (``NAME:K``).
_DIRECTIONAL = ("forward", "forward_activity", "zeroth_order")

#: Multi-task aggregators by name (:mod:`gradkit.multigrad`).
AGGREGATORS: dict[str, str] = {
    "sum": "Sum: sum of the task gradients (sum(losses).backward())",
    "mean": "Mean: their mean",
    "pcgrad": "PCGrad: gradient surgery, random order seeded per run",
    "mgda": "MGDA: min-norm point of the convex hull (Frank-Wolfe)",
    "upgrad": "UPGrad: projections onto the dual cone",
    "gradnorm": "GradNorm(alpha=1.5) on the last shared layer (all parameters shared)",
}


@dataclass(frozen=True)
class SourceChoice:
    """One gradient source of a comparison: ``kind`` (a key of :data:`SOURCES`) and, for
    ``forward``, ``forward_activity`` and ``zeroth_order``, the number of ``directions``."""

    kind: str
    directions: int | None = None

    @property
    def name(self) -> str:
        """``kind`` or ``kind:K``: the name in arm labels, study names and the report."""
        return self.kind if self.directions is None else f"{self.kind}:{self.directions}"

    @property
    def is_backprop(self) -> bool:
        return self.kind == "backprop"


def _kind(name: str) -> str | None:
    key = canonical_name(name)
    for kind in SOURCES:
        if canonical_name(kind) == key:
            return kind
    return _ALIASES.get(key)


def parse_sources(names: list[str]) -> list[SourceChoice]:
    """``--source`` values -> choices (duplicates dropped); ``ValueError`` naming the bad one
    and the known sources."""
    out: list[SourceChoice] = []
    for raw in names:
        name, _, count = raw.strip().partition(":")
        kind = _kind(name)
        if kind is None:
            raise ValueError(
                f"unknown gradient source {raw!r} for --source; choose from: {', '.join(SOURCES)}"
                " (forward, forward_activity and zeroth_order take :K directions, e.g. forward:4)"
            )
        directions = None
        if count:
            if kind not in _DIRECTIONAL:
                raise ValueError(
                    f"--source {raw!r}: only {', '.join(_DIRECTIONAL)} take a number of "
                    "directions (NAME:K)"
                )
            if not count.isdigit() or int(count) < 1:
                raise ValueError(
                    f"--source {raw!r}: the number of directions must be an integer >= 1, "
                    f"got {count!r}"
                )
            directions = int(count)
        if kind in _DIRECTIONAL and directions is None:
            directions = 1
        choice = SourceChoice(kind, directions)
        if choice not in out:
            out.append(choice)
    return out


def parse_aggregators(names: list[str]) -> list[str]:
    """``--aggregator`` values -> canonical names (duplicates dropped); ``ValueError`` naming
    the bad one and the known aggregators."""
    out: list[str] = []
    known = {canonical_name(a): a for a in AGGREGATORS}
    for raw in names:
        key = canonical_name(raw.strip())
        if key not in known:
            raise ValueError(
                f"unknown aggregator {raw!r} for --aggregator; choose from: "
                f"{', '.join(AGGREGATORS)}"
            )
        if known[key] not in out:
            out.append(known[key])
    return out
