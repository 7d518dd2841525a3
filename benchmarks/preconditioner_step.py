"""Step time of Shampoo, SOAP and PSGD Kron: gradkit against heavyball and pytorch-optimizer.

Usage:

    PYTHONPATH=src python benchmarks/preconditioner_step.py [--rounds 7] [--steps 10] [--threads 1]
    PYTHONPATH=src python benchmarks/preconditioner_step.py --device cuda
    PYTHONPATH=src python benchmarks/preconditioner_step.py --shapes cuda --methods SOAP

On CUDA the parameter set is the eight matrices of two GPT-2 small blocks (see ``CUDA_SHAPES``)
and each round is bracketed by ``torch.cuda.synchronize()``; ``--shapes cuda`` runs that set on
the CPU (slow: seconds per step), ``--shapes small`` the small set on either device.

The parameter set on the CPU: two 256x256 and two 512x128 matrices and their bias vectors (256,
256, 512, 512), fp32, fixed random gradients. Every contender is amortised alike: Shampoo's
inverse roots and SOAP's eigenbases are refreshed once every 10 steps
(``precondition_frequency=10`` / ``preconditioning_compute_steps=10``), PSGD Kron's
preconditioner is fitted every step (update probability 1, the libraries' default for the first
500 steps). A round times ``--steps`` consecutive steps of each contender, contenders
interleaved within the round (so a slow phase of the shared machine hits all of them); a
contender's time is the median over rounds of its per-step mean, after one warm-up round (which
also builds every state). Ratios are to gradkit. ``--profile`` adds a table per method of what
a step does, over ``--steps`` further steps under ``torch.profiler``: aten operators, matrix
products and their GFLOP, QR and eigh calls, host syncs, CPU self time by phase, and on CUDA the
kernels launched and the GPU time of matmul, QR, eigh and other kernels.

Matched settings: Shampoo without grafting or momentum and with vectors preconditioned by full
matrices (pytorch-optimizer's ``Shampoo`` does exactly that: the same matrix work); SOAP with
vectors on Adam (``precondition_1d=False``), no dimension merging, and the same largest
preconditioned side for all three (``--max-precond-dim``, default 10000, gradkit's and
pytorch-optimizer's default: every side of the GPT-2 matrices gets a factor; heavyball's own
default, 2048, would leave the 2304 and 3072 sides unpreconditioned, about a quarter of the
matrix work on those shapes); heavyball runs eagerly
(``heavyball.utils.compile_mode = None``: its default compiles with max-autotune, minutes on a
CPU). heavyball has no plain Shampoo.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
from gradient_replay import stepper

SHAPES = [(256, 256), (256, 256), (512, 128), (512, 128)]
# On CUDA: the matrices of two GPT-2 small blocks (attention in/out, MLP in/out), 14.2M params.
CUDA_SHAPES = [(2304, 768), (768, 768), (3072, 768), (768, 3072)] * 2


def make_params(seed: int = 0, device: str = "cpu", shapes=SHAPES) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    ps = []
    for r, c in shapes:
        for shape in ((r, c), (r,)):
            p = torch.nn.Parameter((torch.randn(*shape, generator=g) * 0.02).to(device))
            p.grad = (torch.randn(*shape, generator=g) * 1e-3).to(device)
            ps.append(p)
    return ps


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def contenders(method: str, max_precond_dim: int = 10000):
    """(label, factory) pairs; a factory returns the optimizer or raises ImportError."""
    import gradkit

    out = []
    if method == "Shampoo":
        out.append(("gradkit", lambda ps: gradkit.create_optimizer(
            ps, "shampoo", lr=1e-3, graft="none", momentum=0.0, dampening=0.0,
            precondition_frequency=10, precondition_1d=True)))  # fmt: skip

        def po(ps):
            from pytorch_optimizer import Shampoo

            return Shampoo(ps, lr=1e-3, preconditioning_compute_steps=10)

        out.append(("pytorch-optimizer", po))
    elif method == "SOAP":
        out.append(("gradkit", lambda ps: gradkit.create_optimizer(
            ps, "soap", precondition_frequency=10,
            max_preconditioner_dim=max_precond_dim)))  # fmt: skip

        def po(ps):
            from pytorch_optimizer import SOAP

            return SOAP(ps, precondition_frequency=10, max_precondition_dim=max_precond_dim)

        def hb(ps):
            import heavyball
            import heavyball.utils

            heavyball.utils.compile_mode = None
            return heavyball.SOAP(
                ps, precondition_frequency=10, merge_dims=False, max_precond_dim=max_precond_dim
            )

        out += [("pytorch-optimizer", po), ("heavyball", hb)]
    else:
        out.append(("gradkit", lambda ps: gradkit.create_optimizer(ps, "psgd_kron")))

        def po(ps):
            from pytorch_optimizer import Kron

            return Kron(ps, pre_conditioner_update_probability=1.0, balance_prob=0.0)

        def hb(ps):
            import heavyball
            import heavyball.utils

            heavyball.utils.compile_mode = None
            return heavyball.PSGDKron(ps, preconditioner_update_probability=1.0)

        out += [("pytorch-optimizer", po), ("heavyball", hb)]
    return out


def run(
    method: str,
    rounds: int,
    steps: int,
    device: str = "cpu",
    shapes=None,
    max_precond_dim: int = 10000,
    anatomy: dict[str, dict[str, float]] | None = None,
) -> dict[str, float | str]:
    """Median ms per step of each contender; with ``anatomy`` (a dict), also each one's
    :func:`profile_steps` over ``steps`` further steps, stored under its label."""
    steppers = {}
    results: dict[str, float | str] = {}
    if shapes is None:
        shapes = CUDA_SHAPES if device == "cuda" else SHAPES
    for label, factory in contenders(method, max_precond_dim):
        ps = make_params(device=device, shapes=shapes)
        try:
            steppers[label] = stepper(factory(ps), ps)
        except Exception as err:  # an unavailable or failing library: say so in the table
            results[label] = f"unavailable: {type(err).__name__}: {err}"[:120]
    times: dict[str, list[float]] = {k: [] for k in steppers}
    for r in range(rounds + 1):
        for label, step in list(steppers.items()):
            try:
                _sync(device)
                t0 = time.perf_counter()
                for _ in range(steps):
                    step()
                _sync(device)
                dt = (time.perf_counter() - t0) / steps
            except Exception as err:
                results[label] = f"failed: {type(err).__name__}: {err}"[:120]
                del steppers[label]
                continue
            if r > 0:  # round 0 is the warm-up
                times[label].append(dt * 1e3)
    for label, ts in times.items():
        if ts and label not in results:
            results[label] = statistics.median(ts)
    if anatomy is not None:
        for label, step in steppers.items():
            try:
                anatomy[label] = profile_steps(step, steps, device)
            except Exception as err:  # the timing table stands without it
                print(f"{method} {label}: no profile: {type(err).__name__}: {err}"[:160])
    return results


# operator names (CPU side) and kernel names (GPU side) by phase
_OPS = {
    "matmul": ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm"),
    "qr": ("aten::linalg_qr",),
    "eigh": ("aten::_linalg_eigh",),
    "sync": ("aten::_local_scalar_dense",),
}
_KERNELS = (
    ("qr", ("geqrf", "orgqr", "larf", "ormqr", "ungqr", "geqr2")),
    ("eigh", ("syevd", "syevj", "sytrd", "stedc", "steqr", "ormtr")),
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "gemv")),
)


def profile_steps(step, steps: int, device: str) -> dict[str, float]:
    """Per step, over ``steps`` steps under ``torch.profiler``: aten operators called, matrix
    products (mm/bmm), their GFLOP, QR and eigh calls, host syncs (``.item()`` and the like),
    the CPU self time of the matrix products, QR and the rest; on CUDA also the kernels launched
    and the GPU time of matmul, QR, eigh and other kernels."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    _sync(device)
    with profile(activities=acts, with_flops=True) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    out: dict[str, float] = {k: 0.0 for k in ("ops", "matmul", "gflop", "qr", "eigh", "sync")}
    out.update({"cpu_ms_matmul": 0.0, "cpu_ms_qr": 0.0, "cpu_ms_other": 0.0})
    for e in prof.key_averages():
        if not e.key.startswith("aten::"):
            continue
        out["ops"] += e.count
        out["gflop"] += (e.flops or 0) / 1e9
        for k, names in _OPS.items():
            if e.key in names:
                out[k] += e.count
        ms = e.self_cpu_time_total / 1e3
        low = e.key.lower()
        if e.key in _OPS["matmul"]:
            out["cpu_ms_matmul"] += ms
        elif any(w in low for w in ("qr", "geqrf", "householder", "orgqr")):
            out["cpu_ms_qr"] += ms
        else:
            out["cpu_ms_other"] += ms
    if device == "cuda":
        out.update({"kernels": 0.0, "gpu_ms_matmul": 0.0, "gpu_ms_qr": 0.0})
        out.update({"gpu_ms_eigh": 0.0, "gpu_ms_other": 0.0})
        for e in prof.events():
            if "cuda" not in str(getattr(e, "device_type", "")).lower():
                continue
            out["kernels"] += 1
            low = e.name.lower()
            cat = next((c for c, ws in _KERNELS if any(w in low for w in ws)), "other")
            total = getattr(e, "device_time_total", None)
            out[f"gpu_ms_{cat}"] += (e.cuda_time_total if total is None else total) / 1e3
    return {k: v / steps for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", default="Shampoo,SOAP,PSGD Kron")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument(
        "--shapes", default=None, choices=("small", "cuda"), help="default: by the device"
    )
    ap.add_argument("--max-precond-dim", type=int, default=10000, help="SOAP, all contenders")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="also a table of what a step does (operators, matrix products, QR, syncs, kernels)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"command: {' '.join(['python', *sys.argv])}")
    print(
        f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, "
        f"{args.threads} torch thread(s), {platform.python_version()}, torch {torch.__version__}"
    )
    which = args.shapes or ("cuda" if args.device == "cuda" else "small")
    shapes = CUDA_SHAPES if which == "cuda" else SHAPES
    if args.device == "cuda":
        print(f"device: {torch.cuda.get_device_name()}")
    print(f"parameters: {', '.join('x'.join(map(str, s)) for s in shapes)} + their bias vectors")
    print(f"SOAP: largest preconditioned side {args.max_precond_dim} (all contenders)")
    print()
    print("| method | implementation | ms / step (median) | ratio to gradkit |")
    print("|---|---|---|---|")
    profiled: dict[str, dict[str, dict[str, float]]] = {}
    for method in [m.strip() for m in args.methods.split(",")]:
        anatomy: dict[str, dict[str, float]] | None = {} if args.profile else None
        res = run(
            method, args.rounds, args.steps, args.device, shapes, args.max_precond_dim, anatomy
        )
        base = res.get("gradkit")
        for label, value in res.items():
            if isinstance(value, float):
                ratio = f"{value / base:.2f}" if isinstance(base, float) else "-"
                print(f"| {method} | {label} | {value:.2f} | {ratio} |")
            else:
                print(f"| {method} | {label} | {value} | - |")
        if anatomy:
            profiled[method] = anatomy
        sys.stdout.flush()
    for method, anatomy in profiled.items():
        cols = list(next(iter(anatomy.values())))
        print(f"\n{method}, per step over {args.steps} steps (one refresh among them at f = 10):")
        print("| implementation | " + " | ".join(cols) + " |")
        print("|---" * (len(cols) + 1) + "|")
        for label, row in anatomy.items():
            print(f"| {label} | " + " | ".join(f"{row[c]:.2f}" for c in cols) + " |")


if __name__ == "__main__":
    main()
