"""``DistributedMuon``: Muon whose orthogonalizations are shared among the ranks."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

from gradkit.core.transform import GradientTransformation, chain
from gradkit.distributed.orthogonalize import DistributedOrthogonalize
from gradkit.optim.muon import Muon
from gradkit.transforms.decay import DecoupledWeightDecay
from gradkit.transforms.ema_momentum import EMAMomentum
from gradkit.transforms.scaling import ScaleByLearningRate

__all__ = ["DistributedMuon"]


class DistributedMuon(Muon):
    """Muon for DDP and FSDP2 training; same update rule and hyperparameters as
    :class:`gradkit.optim.muon.Muon` (``fused`` is ignored), plus ``process_group``.

    Call ``step()`` on every rank after the gradients are synchronized (DDP all-reduces them in
    ``backward``; FSDP2 reduce-scatters them into DTensor shards). Every rank must hold the same
    parameters in the same order. With one process (or no process group) it is plain Muon.

    Example::

        model = DDP(model)  # or fully_shard(model)
        opt = DistributedMuon.from_module(model.module, lr=0.02)
    """

    matrix_defaults = {**Muon.matrix_defaults, "process_group": None}

    def matrix_recipe(self, **hp: Any) -> GradientTransformation:
        pg = hp.get("process_group")
        if pg is not None and not isinstance(pg, dist.ProcessGroup):
            raise ValueError(f"Invalid process_group: {pg!r}; must be a ProcessGroup or None")
        self.orthogonalizer = DistributedOrthogonalize(dtype=hp.get("ns_dtype"), group=pg)
        return chain(
            EMAMomentum(), self.orthogonalizer, DecoupledWeightDecay(), ScaleByLearningRate()
        )
