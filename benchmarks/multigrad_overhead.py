"""Time and memory per step of the several-gradients path against a plain step.

A shared MLP trunk (``--width``, two hidden layers) with ``k`` linear heads, one cross-entropy
loss per head, batch ``--batch``. Per step:

- plain:  ``sum(losses).backward(); opt.step()``
- multigrad with Sum / PCGrad / MGDA / UPGrad: ``multigrad.backward(losses, agg, trunk, heads);
  opt.step()``

Time: median over ``--steps`` steps after 3 warm-up steps (forward included), the methods
taking turns step by step so that load from other processes affects them alike. Memory: the
Jacobian's bytes (``k`` trunk gradient copies; exact, reported by ``multigrad.backward``) and,
on CUDA, the measured peak allocated memory of a step. CPU runs use one thread.

Run: ``python benchmarks/multigrad_overhead.py`` (about a minute on one CPU core).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from gradkit import multigrad


def build(width: int, k: int, device: torch.device) -> tuple[nn.Module, nn.ModuleList]:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(256, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()).to(
        device
    )
    heads = nn.ModuleList([nn.Linear(width, 10) for _ in range(k)]).to(device)
    return trunk, heads


METHODS = ("plain", "Sum", "PCGrad", "MGDA", "UPGrad")


class Setup:
    """One model, optimizer and aggregator; ``step()`` runs and times one training step."""

    def __init__(self, method: str, k: int, width: int, batch: int, device: torch.device):
        self.trunk, self.heads = build(width, k, device)
        params = [*self.trunk.parameters(), *self.heads.parameters()]
        self.opt = torch.optim.SGD(params, lr=1e-3)
        aggregators = {
            "Sum": multigrad.Sum,
            "PCGrad": lambda: multigrad.PCGrad(seed=0),
            "MGDA": multigrad.MGDA,
            "UPGrad": multigrad.UPGrad,
        }
        self.agg = None if method == "plain" else aggregators[method]()
        self.device = device
        self.x = torch.randn(batch, 256, device=device)
        self.ys = [torch.randint(0, 10, (batch,), device=device) for _ in range(k)]
        self.times: list[float] = []
        self.jac_bytes = 0
        self.peak = 0

    def step(self, record: bool) -> None:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=False)
        h = self.trunk(self.x)
        losses = [nn.functional.cross_entropy(hd(h), y) for hd, y in zip(self.heads, self.ys)]
        if self.agg is None:
            sum(losses).backward()
        else:
            info = multigrad.backward(
                losses, self.agg, self.trunk.parameters(), self.heads.parameters()
            )
            self.jac_bytes = info.jacobian_bytes
        self.opt.step()
        if cuda:
            torch.cuda.synchronize()
            self.peak = max(self.peak, torch.cuda.max_memory_allocated())
        if record:
            self.times.append(time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--tasks", default="2,4,8")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    trunk, _ = build(args.width, 1, device)
    n_trunk = sum(p.numel() for p in trunk.parameters())
    print(
        f"trunk {n_trunk} float32 parameters ({4 * n_trunk / 2**20:.2f} MiB), batch {args.batch}, "
        f"device {device}, median of {args.steps} steps"
    )
    cuda = device.type == "cuda"
    head = "| k | method | ms / step | x plain | Jacobian (MiB) |" + (
        " peak (MiB) |" if cuda else ""
    )
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for k in [int(v) for v in args.tasks.split(",")]:
        setups = {m: Setup(m, k, args.width, args.batch, device) for m in METHODS}
        for step in range(args.steps + 3):  # round-robin: machine noise hits every method alike
            for setup in setups.values():
                setup.step(record=step >= 3)
        base = statistics.median(setups["plain"].times)
        for method, setup in setups.items():
            secs = statistics.median(setup.times)
            row = f"| {k} | {method} | {1e3 * secs:.2f} | {secs / base:.2f} | "
            row += f"{setup.jac_bytes / 2**20:.2f} |"
            print(row + (f" {setup.peak / 2**20:.1f} |" if cuda else ""))


if __name__ == "__main__":
    main()
