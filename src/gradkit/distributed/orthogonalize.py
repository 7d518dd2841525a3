"""``OrthogonalizeOnRanks``: the placement of Muon's orthogonalizations on the ranks of a group.

It is a parameter of the one Muon step (:class:`gradkit.transforms.muon_update.MuonUpdate`),
which keeps the rule, the state and the compile policy; this module only decides which rank
orthogonalizes which matrix and how the results reach every rank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from gradkit.transforms.muon_update import OrthogonalizeLocally

__all__ = ["OrthogonalizeOnRanks", "assign_owners"]


def _is_dtensor(t: Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - old torch
        return False
    return isinstance(t, DTensor)


def _cost(shape: Sequence[int]) -> float:
    rows = shape[0] if len(shape) else 1
    cols = math.prod(shape[1:]) if len(shape) > 1 else 1
    m, n = min(rows, cols), max(rows, cols)
    return 4.0 * m * m * n + 2.0 * m**3


def assign_owners(shapes: Sequence[Sequence[int]], world_size: int) -> list[int]:
    """Owner rank of each matrix: greedy, largest Newton-Schulz cost first, to the least-loaded
    rank (ties to the lowest rank). Deterministic, so every rank computes the same answer."""
    order = sorted(range(len(shapes)), key=lambda i: (-_cost(shapes[i]), i))
    load = [0.0] * world_size
    owners = [0] * len(shapes)
    for i in order:
        r = min(range(world_size), key=lambda k: (load[k], k))
        owners[i] = r
        load[r] += _cost(shapes[i])
    return owners


class OrthogonalizeOnRanks(OrthogonalizeLocally):
    """Each matrix is orthogonalized by one rank of ``group`` (default: the world).

    - Plain tensors (DDP: every rank holds the whole matrix and the averaged gradient): the
      matrices are assigned to ranks by :func:`assign_owners`; each rank computes the steps of
      its share and one ``all_gather`` of a flat buffer gives every rank all of them.
    - DTensor shards (FSDP2 ``fully_shard``): every rank takes part in gathering the whole
      update (``full_tensor``), only the owner iterates, and ``distribute_tensor(...,
      src_data_rank=owner)`` re-shards the step.

    Without an initialized process group it is :class:`OrthogonalizeLocally`. Copies share the
    process group; pickling needs the default group (``group=None``).
    """

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        self.group = group
        self._owners: list[int] = []

    def _active(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def owned(self, updates: Sequence[Tensor]) -> list[bool]:
        if not self._active():
            self._owners = [0] * len(updates)
            return [True] * len(updates)
        world = dist.get_world_size(self.group)
        rank = dist.get_rank(self.group)
        self._owners = assign_owners([tuple(u.shape) for u in updates], world)
        return [o == rank for o in self._owners]

    def is_shard(self, u: Tensor) -> bool:
        return _is_dtensor(u)

    def full(self, u: Tensor) -> Tensor:
        return u.full_tensor()

    def share(self, updates: Sequence[Tensor], steps: list[Tensor | None]) -> list[Tensor]:
        if not self._active():
            return steps  # type: ignore[return-value]
        rank = dist.get_rank(self.group)
        world = dist.get_world_size(self.group)
        out: list[Tensor | None] = list(steps)
        dense = [i for i, u in enumerate(updates) if not _is_dtensor(u)]
        if dense:
            self._exchange_dense(updates, dense, steps, rank, world, out)
        for i, u in enumerate(updates):
            if _is_dtensor(u):
                out[i] = self._reshard(u, steps[i], self._owners[i], rank)
        return out  # type: ignore[return-value]

    def _exchange_dense(self, updates, idx, steps, rank, world, out) -> None:  # noqa: ANN001
        owners = self._owners
        ref = updates[idx[0]]
        sizes = [sum(updates[i].numel() for i in idx if owners[i] == r) for r in range(world)]
        flat = torch.zeros(max(sizes), dtype=ref.dtype, device=ref.device)
        mine = [steps[i] for i in idx if owners[i] == rank]
        if mine:
            torch.cat([s.reshape(-1).to(ref.dtype) for s in mine], out=flat[: sizes[rank]])
        gathered = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat, group=self.group)
        offsets = [0] * world
        for i in idx:
            r, n = owners[i], updates[i].numel()
            out[i] = gathered[r][offsets[r] : offsets[r] + n].view(updates[i].shape)
            out[i] = out[i].to(updates[i].dtype)
            offsets[r] += n

    def _reshard(self, u: Tensor, step: Tensor | None, owner: int, rank: int) -> Tensor:
        from torch.distributed.tensor import distribute_tensor

        if rank != owner or step is None:
            step = torch.empty(u.shape, dtype=u.dtype, device=u.to_local().device)
        return distribute_tensor(
            step.contiguous(), u.device_mesh, u.placements, src_data_rank=owner
        )

    def __deepcopy__(self, memo: dict[int, Any]) -> OrthogonalizeOnRanks:
        return OrthogonalizeOnRanks(self.group)

    def __getstate__(self) -> dict[str, Any]:
        if self.group is not None:
            raise TypeError(
                "an OrthogonalizeOnRanks with an explicit process group cannot be pickled (a "
                "ProcessGroup is a live connection); rebuild the optimizer and load its state dict"
            )
        return {"group": None, "local_count": self.local_count, "_owners": []}

    def __repr__(self) -> str:
        return f"OrthogonalizeOnRanks(group={self.group!r})"
