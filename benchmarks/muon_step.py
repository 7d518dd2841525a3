"""Time one Muon step on the hidden matrices of GPT-2 small, against other implementations.

Usage (needs CUDA; pytorch-optimizer and heavyball are optional competitors):

    PYTHONPATH=src python benchmarks/muon_step.py [--iters 50] [--json out.json]

The 48 matrices of GPT-2 small's 12 blocks (as ``nn.Linear`` weights): attention ``c_attn``
2304x768, attention ``c_proj`` 768x768, MLP ``c_fc`` 3072x768 and MLP ``c_proj`` 768x3072, fp32
parameters with fp32 gradients. Each contender runs its full optimizer step (momentum,
orthogonalization, parameter update). Times are medians over ``--iters`` steps measured with CUDA
events after warm-up (compilation included in the warm-up).

The floor: the Newton-Schulz iteration's matrix-product flops divided by a measured bf16
matrix-product rate. Per step on an ``m x n`` matrix with ``m <= n``: ``X X^T`` costs
``2 m^2 n``, ``b A + c A^2`` costs ``2 m^3`` and ``B X`` costs ``2 m^2 n``; 5 steps per matrix.
Two rates are measured: a large square product (8192^3, the device's practical peak) and the
batched products of this very workload's shapes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
from gradient_replay import stepper

SHAPES = [(2304, 768), (768, 768), (3072, 768), (768, 3072)]
LAYERS = 12
NS_STEPS = 5


def ns_flops(shapes: list[tuple[int, int]], steps: int = NS_STEPS) -> float:
    total = 0.0
    for r, c in shapes:
        m, n = min(r, c), max(r, c)
        total += steps * (2 * m * m * n + 2 * m**3 + 2 * m * m * n)
    return total


def cuda_time(fn, iters: int, warmup: int) -> float:
    """Median milliseconds of ``fn()`` over ``iters`` runs, each timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def matmul_rate_square(n: int = 8192) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = cuda_time(lambda: a @ b, 20, 5)
    return 2 * n**3 / (ms * 1e-3)


def matmul_rate_workload() -> float:
    """bf16 rate of the workload's own batched products (one NS step's three bmm per bucket)."""
    buckets = {}
    for r, c in SHAPES * LAYERS:
        m, n = min(r, c), max(r, c)
        buckets[(m, n)] = buckets.get((m, n), 0) + 1
    xs = [
        torch.randn(b, m, n, device="cuda", dtype=torch.bfloat16) for (m, n), b in buckets.items()
    ]
    a_s = [
        torch.randn(b, m, m, device="cuda", dtype=torch.bfloat16) for (m, n), b in buckets.items()
    ]

    def run():
        for x, a in zip(xs, a_s):
            torch.bmm(x, x.mT)
            torch.bmm(a, a)
            torch.bmm(a, x)

    ms = cuda_time(run, 30, 5)
    return ns_flops(SHAPES * LAYERS, 1) / (ms * 1e-3)


def make_params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator(device="cuda").manual_seed(seed)
    ps = []
    for _ in range(LAYERS):
        for r, c in SHAPES:
            p = torch.nn.Parameter(torch.randn(r, c, device="cuda", generator=g) * 0.02)
            p.grad = torch.randn(r, c, device="cuda", generator=g) * 1e-3
            ps.append(p)
    return ps


# ------------------------------------------------------------------ contenders
def reference_loop_step(params, bufs, lr=0.02, mu=0.95):
    """Keller Jordan's reference design, written out: one matrix at a time, bf16 NS."""
    a, b, c = 3.4445, -4.7750, 2.0315
    for p, buf in zip(params, bufs):
        g = p.grad
        buf.lerp_(g, 1 - mu)
        u = g.lerp(buf, mu)
        x = u.bfloat16()
        tall = x.size(0) > x.size(1)
        if tall:
            x = x.T
        x = x / (x.norm() + 1e-7)
        for _ in range(NS_STEPS):
            A = x @ x.T
            B = b * A + c * A @ A
            x = a * x + B @ x
        if tall:
            x = x.T
        p.add_(x, alpha=-lr * max(1, p.size(0) / p.size(1)) ** 0.5)


def breakdown(times: dict, grads: list[torch.Tensor], args) -> None:
    """Where gradkit's time goes: stacking/normalizing vs the NS chain (eager and compiled)."""
    from gradkit.transforms.orthogonalize import CompileCache, _ns_loop

    buckets: dict = {}
    for g in grads:
        key = (min(g.shape), max(g.shape), g.shape[0] > g.shape[1])
        buckets.setdefault(key, []).append(g)

    def prep():
        out = []
        for (_, _, tall), gs in buckets.items():
            x = torch.stack([g.mT if tall else g for g in gs])
            x = x / torch.linalg.matrix_norm(x, keepdim=True).clamp_min(1e-7)
            out.append(x.bfloat16())
        return out

    xs = prep()
    times["breakdown: stack+normalize+cast"] = cuda_time(prep, args.iters, args.warmup)
    a, b, c = 3.4445, -4.7750, 2.0315
    cache = CompileCache()

    def compiled(x, *rest):
        fn = cache.get(_ns_loop, (tuple(x.shape), x.dtype), dynamic=False, fullgraph=True)
        return fn(x, *rest)

    times["breakdown: NS eager (bf16 stacks)"] = cuda_time(
        lambda: [_ns_loop(x, NS_STEPS, a, b, c) for x in xs], args.iters, args.warmup
    )
    times["breakdown: NS compiled (bf16 stacks)"] = cuda_time(
        lambda: [compiled(x, NS_STEPS, a, b, c) for x in xs], args.iters, args.warmup
    )
    for x in xs:
        m, n = x.shape[-2:]
        fl = x.shape[0] * NS_STEPS * (4 * m * m * n + 2 * m**3)
        t = cuda_time(lambda x=x: _ns_loop(x, NS_STEPS, a, b, c), args.iters, args.warmup)
        times[f"breakdown: NS eager {tuple(x.shape)} ({fl / t / 1e9:.0f} TFLOP/s)"] = t
    print(json.dumps(times, indent=1), flush=True)


class _PrintingDict(dict):
    """Prints each timing as it is recorded, so a run cut short keeps what it measured."""

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        print(f"  {key}: {value}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--json", type=str, default=None)
    ap.add_argument("--heavyball-compile-mode", type=str, default="default")
    ap.add_argument("--quick", action="store_true", help="gradkit and pytorch-optimizer only")
    ap.add_argument("--profile", action="store_true", help="print the gradkit step's top kernels")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs CUDA", file=sys.stderr)
        return 1

    shapes = SHAPES * LAYERS
    flops = ns_flops(shapes)
    peak = matmul_rate_square()
    wl = matmul_rate_workload()
    results: dict[str, object] = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "ns_gflop": flops / 1e9,
        "bf16_rate_8192_tflops": peak / 1e12,
        "bf16_rate_workload_tflops": wl / 1e12,
        "floor_ms_peak_rate": flops / peak * 1e3,
        "floor_ms_workload_rate": flops / wl * 1e3,
        "step_ms": _PrintingDict(),
    }
    print(json.dumps({k: v for k, v in results.items() if k != "step_ms"}), flush=True)
    times: dict[str, float] = results["step_ms"]  # type: ignore[assignment]

    from gradkit.optim.muon import Muon
    from gradkit.transforms.orthogonalize import orthogonalize

    ps = make_params()
    opt = Muon(ps, lr=0.02)
    times["gradkit Muon step"] = cuda_time(stepper(opt, ps), args.iters, args.warmup)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        step = stepper(opt, ps)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                step()
            torch.cuda.synchronize()
        try:
            table = prof.key_averages().table(sort_by="device_time_total", row_limit=15)
        except Exception:  # noqa: BLE001 - older torch names the column cuda_time_total
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=15)
        print(table, flush=True)
    del opt
    opt = Muon(ps, lr=0.02, fused=False)
    times["gradkit Muon step (fused=False: eager)"] = cuda_time(
        stepper(opt, ps), args.iters, args.warmup
    )
    grads = [p.grad for p in ps]
    times["gradkit orthogonalize only"] = cuda_time(
        lambda: orthogonalize(grads, NS_STEPS), args.iters, args.warmup
    )
    del opt, ps

    if not args.quick:
        breakdown(times, grads, args)
    ps = make_params()
    try:
        from pytorch_optimizer import Muon as PoMuon

        opt = PoMuon([{"params": ps, "use_muon": True}], lr=0.02)
        times["pytorch-optimizer Muon step"] = cuda_time(stepper(opt, ps), args.iters, args.warmup)
        del opt, ps
    except Exception as e:  # noqa: BLE001
        times["pytorch-optimizer Muon step"] = f"unavailable: {e!r}"  # type: ignore[assignment]

    try:
        if args.quick:
            raise RuntimeError("skipped (--quick)")
        import heavyball
        import heavyball.utils

        # heavyball compiles with max-autotune by default (minutes of autotuning); the default
        # inductor mode keeps the run short. Recorded in docs/benchmarks.md.
        heavyball.utils.compile_mode = args.heavyball_compile_mode
        ps = make_params()
        opt = heavyball.Muon(ps, lr=0.02)
        times["heavyball Muon step"] = cuda_time(stepper(opt, ps), args.iters, args.warmup)
        del opt, ps
    except Exception as e:  # noqa: BLE001
        times["heavyball Muon step"] = f"unavailable: {e!r}"  # type: ignore[assignment]

    if not args.quick:
        ps = make_params()
        bufs = [torch.zeros_like(p) for p in ps]
        with torch.no_grad():
            times["reference per-matrix loop"] = cuda_time(
                lambda: reference_loop_step(ps, bufs), args.iters, args.warmup
            )

    floor = results["floor_ms_peak_rate"]
    print(json.dumps(results, indent=2))
    for name, t in times.items():
        if isinstance(t, float):
            print(f"{name:32s} {t:8.3f} ms   {t / floor:5.2f}x floor")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
