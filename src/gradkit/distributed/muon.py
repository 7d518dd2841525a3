"""``DistributedMuon``: Muon whose orthogonalizations are shared among the ranks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from gradkit.core.hyperparams import Hyperparameter, choice
from gradkit.optim.muon import ORTHOGONALIZE_ON, Muon

__all__ = ["DistributedMuon", "PROCESS_GROUP"]


@dataclass(frozen=True)
class _ProcessGroupSpec(Hyperparameter):
    """A ``torch.distributed.ProcessGroup`` or None (the default group)."""

    @property
    def allowed(self) -> str:
        return "a torch.distributed.ProcessGroup or None"

    def check(self, value: Any) -> bool:
        return value is None or (dist.is_available() and isinstance(value, dist.ProcessGroup))

    def invalid_examples(self) -> list[Any]:
        return ["world", 0]


#: construction option: the process group whose ranks share the orthogonalizations
PROCESS_GROUP = _ProcessGroupSpec("process_group", None)


class DistributedMuon(Muon):
    """Muon for DDP and FSDP2 training: the same rule, state and checkpoints as
    :class:`gradkit.optim.muon.Muon`, with each matrix orthogonalized by one rank.

    It is Muon with the construction option ``orthogonalize_on="ranks"`` by default, plus
    ``process_group`` (a construction option: never in param groups, so ``torch.save(
    opt.state_dict())`` works). A checkpoint of one loads into the other.

    Call ``step()`` on every rank after the gradients are synchronized (DDP all-reduces them in
    ``backward``; FSDP2 reduce-scatters them into DTensor shards). Every rank must hold the same
    parameters in the same order. With one process (or no initialized process group) it is
    plain Muon.

    Example::

        model = DDP(model)  # or fully_shard(model)
        opt = DistributedMuon.from_module(model.module, lr=0.02)
    """

    options = tuple(
        choice("orthogonalize_on", "ranks", ORTHOGONALIZE_ON.options)
        if spec.name == "orthogonalize_on"
        else spec
        for spec in Muon.options
    ) + (PROCESS_GROUP,)
