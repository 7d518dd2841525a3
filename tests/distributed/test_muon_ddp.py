"""DistributedMuon under DDP (2 processes, gloo, CPU) equals single-process Muon after 20 steps,
and every matrix is orthogonalized by exactly one rank."""

from __future__ import annotations

import pytest
from torch import nn

from muon_distributed import run_rank, spawn_and_compare

WIDTHS = (6, 16, 16, 24, 16, 3)


def _ddp(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model)  # averages the two ranks' half-batch gradients


def _worker(rank: int, port: int, out: str) -> None:
    run_rank(rank, port, out, WIDTHS, _ddp, lambda m: [p.detach() for p in m.parameters()])


@pytest.mark.slow
def test_ddp_matches_single_process(tmp_path):
    spawn_and_compare(_worker, tmp_path / "ddp.pt", WIDTHS)
