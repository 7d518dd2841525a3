"""Distributed geometry-aware optimizers: each matrix is orthogonalized by exactly one rank.

:class:`DistributedMuon` is Muon with the construction option ``orthogonalize_on="ranks"``:
the same one matrix step (:class:`gradkit.transforms.muon_update.MuonUpdate`), with the
placement :class:`OrthogonalizeOnRanks`:

- DDP (plain tensors, gradients already all-reduced): the matrices of a group are assigned to
  ranks by a deterministic greedy balance of the Newton-Schulz cost; each rank orthogonalizes its
  share (batched by shape) and one ``all_gather`` of a flat buffer hands every rank all results.
- FSDP2 (DTensor parameters from ``torch.distributed.fsdp.fully_shard``): the full update of a
  matrix is gathered, its owner orthogonalizes it, and ``distribute_tensor(...,
  src_data_rank=owner)`` re-shards the result, so only the owner runs the iteration.

State and checkpoints are Muon's: a checkpoint moves between Muon and DistributedMuon.
"""

from gradkit.distributed.muon import DistributedMuon
from gradkit.distributed.orthogonalize import OrthogonalizeOnRanks, assign_owners

__all__ = ["DistributedMuon", "OrthogonalizeOnRanks", "assign_owners"]


def __getattr__(name: str):  # noqa: ANN202
    if name == "DistributedOrthogonalize":
        raise AttributeError(
            "gradkit.distributed.DistributedOrthogonalize was removed (gradkit 0.2): Muon has one "
            "matrix step, MuonUpdate, whose placement OrthogonalizeOnRanks shares the "
            "orthogonalizations among ranks; use DistributedMuon, or "
            "MuonUpdate(orthogonalize_on=OrthogonalizeOnRanks(group)) in a chain"
        )
    raise AttributeError(f"module 'gradkit.distributed' has no attribute {name!r}")
