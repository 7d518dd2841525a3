"""Elementwise passes per tensor per step of the default (eager multi-tensor) path.

Counts the ATen operations one ``step()`` runs (torch.profiler, CPU) on a set of equal small
tensors, divides by the tensor count, and prints them next to the same count for torch.optim's
foreach implementation (or pytorch-optimizer's where torch has no such optimizer). Fewer passes
over memory is what the eager path can win without a compiler.

    python benchmarks/eager_passes.py [--tensors 50] [--optimizers adamw,adam,sgd,lion,...]
"""

from __future__ import annotations

import argparse
import platform

import torch
from torch.profiler import ProfilerActivity, profile

import gradkit

#: the anchor implementation of the same rule: torch.optim (foreach) or pytorch-optimizer
ANCHORS = {
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True),
    "amsgrad": lambda ps: torch.optim.Adam(ps, lr=1e-3, amsgrad=True, foreach=True),
    "sgd": lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, foreach=True),
}
_PO = {"lion": "Lion", "madgrad": "MADGRAD", "adamp": "AdamP", "diffgrad": "DiffGrad"}
GRADKIT_KW = {"sgd": {"lr": 1e-2, "momentum": 0.9}}

#: bookkeeping ops that move no tensor data
_IGNORED = (
    "aten::empty",
    "aten::view",
    "aten::as_strided",
    "aten::detach",
    "aten::lift_fresh",
    "aten::resolve",
    "aten::is_nonzero",
    "aten::item",
    "aten::_local_scalar_dense",
    "aten::result_type",
    "aten::to",
    "aten::_to_copy",
    "aten::alias",
    "aten::expand",
    "aten::unsqueeze",
    "aten::squeeze",
    "aten::select",
    "aten::slice",
    "aten::stack",
    "aten::cat",
    "aten::zeros",
    "aten::zeros_like",
    "aten::empty_like",
    "aten::copy_",
    "aten::fill_",
    "aten::zero_",
    "aten::tensor",
    "aten::scalar_tensor",
    "aten::_foreach_norm",
    "aten::resize_",
    "aten::resize_as_",
    "aten::clone",
    "aten::max",
    "aten::sum",
)


def _anchor(name: str):
    if name in ANCHORS:
        return ANCHORS[name], "torch.optim foreach"
    if name in _PO:
        import pytorch_optimizer

        cls = getattr(pytorch_optimizer, _PO[name])
        return (lambda ps: cls(ps, lr=1e-3)), "pytorch-optimizer"
    return None, "-"


def passes_per_tensor(make, n: int, steps: int = 3) -> float:
    """Data-moving ATen ops per tensor in one step (after ``steps`` warm-up steps)."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(64, 64)) for _ in range(n)]
    opt = make(params)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    for p in params:
        p.grad = torch.randn_like(p)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        opt.step()
    total = 0
    for ev in prof.events():
        if not ev.name.startswith("aten::") or ev.name in _IGNORED:
            continue
        parent = ev.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        if parent is not None:
            continue  # inside another ATen op (a foreach op's per-tensor fallback on CPU)
        total += n if ev.name.startswith("aten::_foreach_") else 1
    return total / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=50)
    parser.add_argument(
        "--optimizers", default="adamw,adam,amsgrad,sgd,lion,madgrad,adamp,diffgrad"
    )
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
        f"gradkit {gradkit.__version__}; {args.tensors} tensors of 64x64"
    )
    print("| optimizer | gradkit default (passes/tensor) | anchor | anchor passes/tensor |")
    print("|---|---|---|---|")
    for name in args.optimizers.split(","):
        kw = GRADKIT_KW.get(name, {"lr": 1e-3})
        ours = passes_per_tensor(
            lambda ps, n=name, kw=kw: gradkit.create_optimizer(ps, n, **kw), args.tensors
        )
        make, label = _anchor(name)
        theirs = passes_per_tensor(make, args.tensors) if make else float("nan")
        print(f"| {name} | {ours:.1f} | {label} | {theirs:.1f} |")


if __name__ == "__main__":
    main()
