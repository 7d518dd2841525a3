"""Distributed geometry-aware optimizers: each matrix is orthogonalized by exactly one rank.

- DDP (plain tensors, gradients already all-reduced): the matrices of a group are assigned to
  ranks by a deterministic greedy balance of the Newton-Schulz cost; each rank orthogonalizes its
  share (batched by shape) and one ``all_gather`` of a flat buffer hands every rank all results.
- FSDP2 (DTensor parameters from ``torch.distributed.fsdp.fully_shard``): the full update of a
  matrix is gathered, its owner orthogonalizes it, and ``distribute_tensor(...,
  src_data_rank=owner)`` re-shards the result, so only the owner runs the iteration.

Use :class:`DistributedMuon` in place of :class:`gradkit.optim.muon.Muon`.
"""

from gradkit.distributed.muon import DistributedMuon
from gradkit.distributed.orthogonalize import DistributedOrthogonalize, assign_owners

__all__ = ["DistributedMuon", "DistributedOrthogonalize", "assign_owners"]
