"""DistributedMuon under FSDP2 (DTensor-sharded parameters; 2 processes, gloo, CPU) equals
single-process Muon after 20 steps; each matrix is orthogonalized by its owner only."""

from __future__ import annotations

import pytest
from torch import nn

from muon_distributed import run_rank, spawn_and_compare

WIDTHS = (6, 16, 16, 24, 3)


def _fsdp2(model: nn.Module) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    mesh = init_device_mesh("cpu", (2,))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)  # gradients: averaged shards
    assert all(isinstance(p, DTensor) for p in model.parameters())
    return model


def _worker(rank: int, port: int, out: str) -> None:
    run_rank(rank, port, out, WIDTHS, _fsdp2, lambda m: [p.full_tensor() for p in m.parameters()])


@pytest.mark.slow
def test_fsdp2_matches_single_process(tmp_path):
    spawn_and_compare(_worker, tmp_path / "fsdp.pt", WIDTHS)
