"""Host (Python) overhead of one optimizer step: GPT-2 small's tensor count, tiny tensors.

On a GPU an optimizer step is launched asynchronously; when the host needs longer to issue it
than the GPU needs to run it, the host time *is* the step time. This script measures that host
time on the CPU where it can be isolated: 148 parameters (GPT-2 small's count), 2x4 matrices, so that the arithmetic is negligible and what remains is Python, dispatch and guard work.

    python benchmarks/host_overhead.py [--optimizers adamw,sgd,lion] [--tensors 148]

Prints microseconds per step (best of 5 repeats of 200 steps) for gradkit's eager multi-tensor
path, its flat fast path (``fused=True``) or, for chains with per-tensor reductions, its compiled
multi-tensor path (``fused="compile"``), and torch.optim's foreach and
fused implementations where torch has the optimizer, else pytorch-optimizer's.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

import gradkit

TORCH = {
    "adamw": lambda ps, **kw: torch.optim.AdamW(ps, lr=1e-3, **kw),
    "adam": lambda ps, **kw: torch.optim.Adam(ps, lr=1e-3, **kw),
    "sgd": lambda ps, **kw: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, **kw),
}


#: the same optimizer in pytorch-optimizer (the anchor for optimizers torch.optim lacks)
PYTORCH_OPTIMIZER = {
    "adamp": "AdamP",
    "sgdp": "SGDP",
    "novograd": "NovoGrad",
    "lion": "Lion",
    "madgrad": "MADGRAD",
    "diffgrad": "DiffGrad",
}


def _pytorch_optimizer(name: str) -> Callable | None:
    try:
        import pytorch_optimizer
    except ImportError:
        return None
    return getattr(pytorch_optimizer, PYTORCH_OPTIMIZER[name], None)


def host_us(make: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer], n: int) -> float:
    """Best-of-5 microseconds per ``step()`` over 200 steps, after 20 warm-up steps."""
    params = [torch.nn.Parameter(torch.randn(2, 4)) for _ in range(n)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = make(params)
    for _ in range(20):
        opt.step()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(200):
            opt.step()
        best = min(best, (time.perf_counter() - start) / 200 * 1e6)
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--optimizers", default="adamw,sgd,lion,madgrad")
    ap.add_argument("--tensors", type=int, default=148)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {args.tensors} tensors of 2x4, CPU, 1 thread")
    print(f"{'optimizer':10s} {'row':32s} {'us/step':>8s}")
    for name in args.optimizers.split(","):
        info = gradkit.optim.registry.get_info(name)
        flat_ok = info.cls([torch.nn.Parameter(torch.ones(2, 2))], fused=False).transform.flat_ok
        rows: dict[str, Callable] = {
            "gradkit (eager multi-tensor)": lambda ps, c=info.cls: c(ps, fused=False),
        }
        if flat_ok:
            rows["gradkit (fast path, compiled)"] = lambda ps, c=info.cls: c(ps, fused=True)
        else:
            rows["gradkit (fused='compile')"] = lambda ps, c=info.cls: c(ps, fused="compile")
        if name in TORCH:
            rows["torch.optim (foreach)"] = lambda ps, f=TORCH[name]: f(ps, foreach=True)
            rows["torch.optim (fused)"] = lambda ps, f=TORCH[name]: f(ps, fused=True)
        if name in PYTORCH_OPTIMIZER and (cls := _pytorch_optimizer(name)) is not None:
            rows[f"pytorch_optimizer.{cls.__name__}"] = cls
        for label, make in rows.items():
            print(f"{name:10s} {label:32s} {host_us(make, args.tensors):8.0f}", flush=True)


if __name__ == "__main__":
    main()
