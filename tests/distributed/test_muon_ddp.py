"""DistributedMuon under DDP (2 processes, gloo, CPU) equals single-process Muon after 20 steps,
and every matrix is orthogonalized by exactly one rank."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from gradkit.optim.muon import Muon

STEPS = 20
HP = dict(lr=0.02, momentum=0.9, weight_decay=0.01, adamw_lr=1e-2, adamw_wd=0.01)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16),
        nn.Tanh(),
        nn.Linear(16, 16),
        nn.Tanh(),
        nn.Linear(16, 24),
        nn.Tanh(),
        nn.Linear(24, 16),
        nn.Tanh(),
        nn.Linear(16, 3),
    )


def batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)) for _ in range(STEPS)]


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    from torch.nn.parallel import DistributedDataParallel as DDP

    from gradkit.distributed import DistributedMuon

    model = make_model()
    ddp = DDP(model)
    opt = DistributedMuon(model.parameters(), fused=False, **HP)
    for x, y in batches():
        half = slice(4 * rank, 4 * rank + 4)  # each rank its half of the batch
        opt.zero_grad()
        nn.functional.mse_loss(ddp(x[half]), y[half]).backward()  # DDP averages the gradients
        opt.step()
    count = torch.tensor([opt.orthogonalizer.local_count])
    dist.all_reduce(count)
    if rank == 0:
        torch.save({"params": [p.detach() for p in model.parameters()], "count": int(count)}, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_matches_single_process(tmp_path):
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
    got = torch.load(out)

    torch.set_num_threads(1)
    model = make_model()
    opt = Muon(model.parameters(), fused=False, **HP)
    params = list(model.parameters())
    for x, y in batches():
        # the gradient DDP forms: each half-batch gradient divided by 2, then summed
        halves = [
            torch.autograd.grad(nn.functional.mse_loss(model(x[h]), y[h]), params)
            for h in (slice(0, 4), slice(4, 8))
        ]
        for p, g0, g1 in zip(params, *halves):
            p.grad = g0 / 2 + g1 / 2
        opt.step()
    # The reduce-scatter sums the two half-batch gradients in a different order than the
    # reference (1 ulp), and each Newton-Schulz iteration amplifies such differences by a few
    # times; over 20 steps that reaches ~1e-6 on weights of size ~0.1. A wrong sharding or a
    # double update moves weights by ~lr = 2e-2, four orders of magnitude above this bound.
    for a, b in zip(got["params"], params):
        assert torch.allclose(a, b.detach(), rtol=1e-5, atol=1e-5), (a - b).abs().max()
    n_matrices = sum(p.ndim >= 2 for p in model.parameters())
    assert got["count"] == n_matrices * STEPS  # each matrix once per step, on one rank
