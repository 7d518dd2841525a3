"""The problem, the two-process run and the single-process reference of the DistributedMuon tests.

A test module defines a picklable ``_worker(rank, port, out)`` that calls :func:`run_rank` with
its wrapper (DDP, FSDP2); :func:`spawn_and_compare` runs it on two gloo (CPU) processes, each rank
on its half of every batch, and compares rank 0's result with :func:`single_process_reference`:
plain Muon on the gradient the two ranks average.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from gradkit.optim.muon import Muon

STEPS = 20
HP = dict(lr=0.02, momentum=0.9, weight_decay=0.01, adamw_lr=1e-2, adamw_wd=0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model(widths: tuple[int, ...]) -> nn.Module:
    """``Linear`` layers of the given widths with ``Tanh`` between them (seed 0)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:])):
        if i:
            layers.append(nn.Tanh())
        layers.append(nn.Linear(d_in, d_out))
    return nn.Sequential(*layers)


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)) for _ in range(STEPS)]


def _init_process_group(rank: int, port: int) -> None:
    """Join the two-process gloo group on ``port`` (one intra-op thread)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)


def leave_and_exit() -> None:
    """End a spawned rank: wait for the other rank, leave the group, and exit at once.

    Exiting through ``os._exit`` skips the interpreter's teardown, where gloo's background
    threads can still be joinable and abort the process ("terminate called without an active
    exception": a SIGABRT seen now and then under load, after every result was saved). The
    barrier makes sure no rank leaves while the other still needs a collective.
    """
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)


def _save_and_finish(
    rank: int, params: list[torch.Tensor], local_count: int, out: str, opt_state: dict | None
) -> None:
    """Sum the ranks' orthogonalization counts; rank 0 saves it with ``params`` and its
    optimizer's state dict (``torch.save``: no process group inside); leave the group."""
    count = torch.tensor([local_count])
    dist.all_reduce(count)
    if rank == 0:
        torch.save({"params": params, "count": int(count), "opt": opt_state}, out)
    leave_and_exit()


def run_rank(
    rank: int,
    port: int,
    out: str,
    widths: tuple[int, ...],
    wrap: Callable[[nn.Module], nn.Module],
    full_params: Callable[[nn.Module], list[torch.Tensor]],
) -> None:
    """One rank's part: DistributedMuon on ``wrap(make_model(widths))``, each rank on its half of
    every batch (the wrapper averages the gradients); rank 0 saves ``full_params(model)``."""
    _init_process_group(rank, port)
    from gradkit.distributed import DistributedMuon

    model = make_model(widths)
    forward = wrap(model)
    # an explicit process group: a construction option, never in the param groups
    opt = DistributedMuon(model.parameters(), fused=False, process_group=dist.group.WORLD, **HP)
    for x, y in batches():
        half = slice(4 * rank, 4 * rank + 4)
        opt.zero_grad()
        nn.functional.mse_loss(forward(x[half]), y[half]).backward()
        opt.step()
    plain = not any(hasattr(p, "full_tensor") for p in model.parameters())
    state = opt.state_dict() if plain else None  # DDP: every rank holds the whole state
    _save_and_finish(rank, full_params(model), opt.orthogonalizer.local_count, out, state)


def spawn_and_compare(
    worker: Callable[[int, int, str], None], out: Path, widths: tuple[int, ...]
) -> None:
    """Run ``worker(rank, port, out)`` on two processes; compare with the single-process run."""
    mp.spawn(worker, args=(free_port(), str(out)), nprocs=2, join=True)
    got = torch.load(out, weights_only=False)
    reference, reference_opt = single_process_reference(widths)
    assert_matches_reference(got, reference)
    if got["opt"] is not None:  # the DistributedMuon checkpoint resumes under plain Muon
        assert_checkpoint_moves_to_muon(got["opt"], reference_opt)


def single_process_reference(widths: tuple[int, ...]) -> tuple[list[nn.Parameter], Muon]:
    """Train ``make_model(widths)`` with Muon on the gradient the two ranks form; its parameters
    and the optimizer."""
    torch.set_num_threads(1)
    model = make_model(widths)
    params = list(model.parameters())
    opt = Muon(params, fused=False, **HP)
    for x, y in batches():
        # the gradient DDP/FSDP forms: each half-batch gradient divided by 2, then summed
        halves = [
            torch.autograd.grad(nn.functional.mse_loss(model(x[h]), y[h]), params)
            for h in (slice(0, 4), slice(4, 8))
        ]
        for p, g0, g1 in zip(params, *halves):
            p.grad = g0 / 2 + g1 / 2
        opt.step()
    return params, opt


def assert_checkpoint_moves_to_muon(saved: dict, reference_opt: Muon) -> None:
    """A DistributedMuon state dict loads into Muon, with the reference's keys and (to the
    rounding of the run) its values."""
    params = [p for g in reference_opt.param_groups for p in g["params"]]
    muon = Muon([p.detach().clone().requires_grad_() for p in params], **HP)
    muon.load_state_dict(saved)
    ref = reference_opt.state_dict()
    assert saved["state"].keys() == ref["state"].keys()
    for pid, st in ref["state"].items():
        assert set(saved["state"][pid]) == set(st)
        for k, v in st.items():
            assert torch.allclose(saved["state"][pid][k], v, rtol=1e-5, atol=1e-5), k
    assert all("process_group" not in g for g in saved["param_groups"])


def assert_matches_reference(got: dict, params: list[nn.Parameter]) -> None:
    """Rank 0's parameters equal the reference's; each matrix orthogonalized once per step."""
    # The reduce-scatter sums the two half-batch gradients in a different order than the
    # reference (1 ulp), and each Newton-Schulz iteration amplifies such differences by a few
    # times; over 20 steps that reaches ~1e-6 on weights of size ~0.1. A wrong sharding or a
    # double update moves weights by ~lr = 2e-2, four orders of magnitude above this bound.
    for a, b in zip(got["params"], params):
        assert torch.allclose(a, b.detach(), rtol=1e-5, atol=1e-5), (a - b).abs().max()
    n_matrices = sum(p.ndim >= 2 for p in params)
    assert got["count"] == n_matrices * STEPS  # each matrix once per step, on one rank
