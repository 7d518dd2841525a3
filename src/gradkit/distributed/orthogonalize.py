"""``DistributedOrthogonalize``: Muon's orthogonalization with the matrices shared among ranks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from gradkit.core.transform import State, StepContext, TensorList
from gradkit.transforms.orthogonalize import QUINTIC, Orthogonalize, orthogonalize, shape_scale

__all__ = ["DistributedOrthogonalize", "assign_owners"]


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


class DistributedOrthogonalize(Orthogonalize):
    """:class:`~gradkit.transforms.orthogonalize.Orthogonalize` where each rank orthogonalizes only
    the matrices it owns and the results are exchanged (see :mod:`gradkit.distributed`).

    Same hyperparameters and result as the single-process transform. ``local_count`` counts the
    matrices this rank has orthogonalized (for checks that no matrix is done twice).
    ``group``: the process group (default: the world).
    """

    def __init__(
        self,
        coefficients: Sequence[float] = QUINTIC,
        dtype: torch.dtype | None = None,
        eps: float = 1e-7,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        super().__init__(coefficients, dtype, eps)
        self.group = group
        self.local_count = 0

    def _ortho(self, mats: list[Tensor], steps: int) -> list[Tensor]:
        self.local_count += len(mats)
        if not mats:
            return []
        return orthogonalize(mats, steps, self.coefficients, eps=self.eps, dtype=self.dtype)

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        steps = int(ctx.group["ns_steps"])
        if not dist.is_available() or not dist.is_initialized():
            out = self._ortho(list(updates), steps)
        else:
            world = dist.get_world_size(self.group)
            rank = dist.get_rank(self.group)
            owners = assign_owners([tuple(u.shape) for u in updates], world)
            out = [None] * len(updates)
            dense = [i for i, u in enumerate(updates) if not _is_dtensor(u)]
            sharded = [i for i, u in enumerate(updates) if _is_dtensor(u)]
            if dense:
                self._exchange_dense(updates, dense, owners, rank, world, steps, out)
            for i in sharded:
                out[i] = self._owner_update_dtensor(updates[i], owners[i], rank, steps)
        scale = ctx.group["scale"]
        factors = [shape_scale(u.shape, scale) for u in updates]
        if any(f != 1.0 for f in factors):
            torch._foreach_mul_(out, factors)
        return ctx.owned(out)

    def _exchange_dense(self, updates, idx, owners, rank, world, steps, out) -> None:
        mine = [i for i in idx if owners[i] == rank]
        results = self._ortho([updates[i] for i in mine], steps)
        ref = updates[idx[0]]
        sizes = [sum(updates[i].numel() for i in idx if owners[i] == r) for r in range(world)]
        flat = torch.zeros(max(sizes), dtype=ref.dtype, device=ref.device)
        if results:
            torch.cat([r.reshape(-1) for r in results], out=flat[: sizes[rank]])
        gathered = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat, group=self.group)
        offsets = [0] * world
        for i in idx:
            r, n = owners[i], updates[i].numel()
            out[i] = gathered[r][offsets[r] : offsets[r] + n].view(updates[i].shape)
            offsets[r] += n

    def _owner_update_dtensor(self, u: Tensor, owner: int, rank: int, steps: int) -> Tensor:
        from torch.distributed.tensor import distribute_tensor

        full = u.full_tensor()  # every rank takes part in the gather; only the owner iterates
        result = self._ortho([full], steps)[0] if rank == owner else torch.empty_like(full)
        return distribute_tensor(result, u.device_mesh, u.placements, src_data_rank=owner)
