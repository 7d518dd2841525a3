"""Muon and DistributedMuon share one matrix step, so their checkpoints move between them; the
process group is a construction option, so ``torch.save(opt.state_dict())`` works. One process,
gloo (CPU)."""

from __future__ import annotations

import io
import os

import pytest
import torch
import torch.distributed as dist

from gradkit.distributed import DistributedMuon, OrthogonalizeOnRanks
from gradkit.optim.muon import Muon
from helpers import single_threaded_tests  # noqa: F401  (autouse: one intra-op thread)
from muon_distributed import free_port

SHAPES = [(8, 6), (6, 10), (8, 6), (3, 2, 2), (6,)]
HP = dict(lr=0.02, momentum=0.9, weight_decay=0.01, adamw_lr=1e-2)


@pytest.fixture
def process_group():
    """A one-rank gloo world and a subgroup of it."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        yield dist.new_group([0])
    finally:
        dist.destroy_process_group()


def _params(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).requires_grad_() for s in SHAPES]


def _run(opt, params, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g) + 0.5 * p.detach()
        opt.step()


def test_process_group_stays_out_of_the_state_dict(process_group):
    ps = _params()
    opt = DistributedMuon(ps, process_group=process_group, **HP)
    assert isinstance(opt.orthogonalizer, OrthogonalizeOnRanks)
    assert opt.orthogonalizer.group is process_group
    _run(opt, ps, 2, seed=1)
    assert opt.orthogonalizer.local_count == 2 * 4  # four matrices, each once per step
    for g in opt.param_groups:
        assert "process_group" not in g
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)  # failed when the group was a param-group entry
    buf.seek(0)
    assert torch.load(buf)["state"].keys() == opt.state_dict()["state"].keys()
    with pytest.raises(ValueError, match="process_group"):
        DistributedMuon(_params(), process_group="world")


@pytest.mark.parametrize("first,second", [(Muon, DistributedMuon), (DistributedMuon, Muon)])
def test_checkpoint_moves_between_muon_and_distributed_muon(process_group, first, second):
    extra = {"process_group": process_group}
    kw = {c: extra if c is DistributedMuon else {} for c in (first, second)}
    ref_params = _params()
    ref = first(ref_params, **HP, **kw[first])
    _run(ref, ref_params, 6, seed=1)  # the uninterrupted run

    ps = _params()
    opt = first(ps, **HP, **kw[first])
    _run(opt, ps, 3, seed=1)
    buf = io.BytesIO()
    torch.save({"params": [p.detach() for p in ps], "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)
    qs = [p.clone().requires_grad_() for p in ckpt["params"]]
    resumed = second(qs, **HP, **kw[second])
    resumed.load_state_dict(ckpt["opt"])
    # the seed-1 stream's last three steps: replay the first three draws, then continue
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        for p in qs:
            torch.randn(p.shape, generator=g)
    for _ in range(3):
        for q in qs:
            q.grad = torch.randn(q.shape, generator=g) + 0.5 * q.detach()
        resumed.step()
    for p, q in zip(ref_params, qs):
        assert torch.equal(p, q)
