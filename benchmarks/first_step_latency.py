"""First-step latency and graph count of gradkit's compiled flat path (``fused=True``).

For each optimizer, on a GPT-like group of 150 tensors (about 1.0M fp32 parameters, fixed random
gradients), with a ``CosineAnnealingLR(T_max=1000)`` made right after the optimizer and stepped
after every step, in fresh processes:

- ``cold``: wall time of the first two ``step()`` calls in a new process with an empty inductor
  cache (``TORCHINDUCTOR_CACHE_DIR`` and ``TRITON_CACHE_DIR`` set to a new temporary
  directory), as ``step 1 + step 2`` seconds (both are timed because a path may compile at
  either: the first step, or a recompile at step 2, or an eager first step and a compile at 2);
- ``2nd inst``: the same two steps of a second optimizer instance (new parameters, same shapes)
  in that same process;
- ``graphs``: dynamo graphs compiled by that process (``counters["stats"]["unique_graphs"]``,
  first and second instance included) and ``run graphs``, those compiled during the rest of a
  1000-step run of the first instance (steps 3-1000); ``breaks``: dynamo's graph breaks in the
  whole process;
- ``max later s``: the slowest of steps 3-1000 (a recompile shows here);
- ``ms/step``: median (and fastest) milliseconds per step over the last 200 steps of that run;
- ``warm``: the first two steps in another new process that reuses the filled cache directory.

Each measurement runs in a child process of this script (``--child``); the parent prints a table.

Usage:
    python benchmarks/first_step_latency.py                         # cpu, all four optimizers
    python benchmarks/first_step_latency.py --device cuda --json out.json
    python benchmarks/first_step_latency.py --optimizers adamw --steps 200
    # the optimizers with per-tensor reductions (segmented), and 4x the tensors
    python benchmarks/first_step_latency.py --optimizers adamp,sgdp,novograd,mars,stable_spam
    python benchmarks/first_step_latency.py --optimizers adamp --layers 48
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

#: gradkit registry name -> hyperparameters (momentum for SGD: its buffer is lazily allocated)
OPTIMIZERS: dict[str, dict[str, Any]] = {
    "adamw": {"lr": 1e-3, "weight_decay": 0.01},
    "sgd": {"lr": 1e-2, "momentum": 0.9, "weight_decay": 0.01},
    "lion": {"lr": 1e-4, "weight_decay": 0.01},
    "madgrad": {"lr": 1e-3},
    # per-tensor reductions (segmented over the flat buffer; not in the default list)
    "adamp": {"lr": 1e-3, "weight_decay": 0.01},
    "sgdp": {"lr": 1e-2, "momentum": 0.9, "weight_decay": 0.01},
    "novograd": {"lr": 1e-3, "weight_decay": 0.01},
    "mars": {"lr": 1e-3, "weight_decay": 0.01},
    "stable_spam": {"lr": 1e-3, "weight_decay": 0.01},
}
#: the optimizers run when ``--optimizers`` is not given
DEFAULT_OPTIMIZERS = ("adamw", "sgd", "lion", "madgrad")
#: transformer blocks of the parameter set (``--layers``; 12 blocks: 150 tensors)
LAYERS = int(os.environ.get("GRADKIT_BENCH_LAYERS", "12"))


def shapes(layers: int | None = None) -> list[tuple[int, ...]]:
    """GPT-like parameter shapes: ``layers`` blocks (default 12) of width 64, 6000-token
    embedding, a small head; with 12 blocks 150 tensors, 1.0M parameters."""
    width, vocab, ctx = 64, 6000, 256
    layers = LAYERS if layers is None else layers
    out: list[tuple[int, ...]] = [(vocab, width), (ctx, width)]
    for _ in range(layers):
        out += [(width,), (width,), (width, 3 * width), (3 * width,), (width, width), (width,)]
        out += [(width,), (width,), (width, 4 * width), (4 * width,), (4 * width, width), (width,)]
    out += [(width,), (width,), (10, width), (10,)]
    return out


def _params(device: str, seed: int) -> list:
    import torch

    gen = torch.Generator().manual_seed(seed)
    params = []
    for s in shapes():
        p = torch.nn.Parameter((torch.randn(s, generator=gen) * 0.02).to(device))
        p.grad = (torch.randn(s, generator=gen) * 1e-3).to(device)
        params.append(p)
    return params


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def child(name: str, device: str, steps: int, warm_only: bool) -> dict[str, Any]:
    """One fresh process: the measurements above, returned as a dict (printed as JSON)."""
    t_import = time.perf_counter()
    import torch
    from torch._dynamo.utils import counters

    import gradkit

    out: dict[str, Any] = {"import_s": time.perf_counter() - t_import}
    hp = OPTIMIZERS[name]
    params = _params(device, 0)
    opt = gradkit.create_optimizer(params, name, fused=True, **hp)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    _sync(device)
    t0 = time.perf_counter()
    opt.step()
    _sync(device)
    out["first_s"] = time.perf_counter() - t0
    sched.step()
    t0 = time.perf_counter()
    opt.step()
    _sync(device)
    out["step2_s"] = time.perf_counter() - t0
    sched.step()
    out["graphs_first"] = counters["stats"]["unique_graphs"]
    if warm_only:
        return out
    params2 = _params(device, 1)
    opt2 = gradkit.create_optimizer(params2, name, fused=True, **hp)
    sched2 = torch.optim.lr_scheduler.CosineAnnealingLR(opt2, T_max=steps)
    for key in ("second_s", "second_step2_s"):
        t0 = time.perf_counter()
        opt2.step()
        _sync(device)
        out[key] = time.perf_counter() - t0
        sched2.step()
    del opt2, params2, sched2
    before = counters["stats"]["unique_graphs"]
    times = []
    for _ in range(steps - 2):
        t0 = time.perf_counter()
        opt.step()
        _sync(device)
        times.append(time.perf_counter() - t0)
        sched.step()
    out["run_graphs"] = counters["stats"]["unique_graphs"] - before
    out["graphs"] = counters["stats"]["unique_graphs"]
    out["graph_breaks"] = sum(counters["graph_break"].values())
    tail = times[-200:]
    out["ms_step"] = statistics.median(tail) * 1e3
    out["ms_step_min"] = min(tail) * 1e3
    out["max_run_step_s"] = max(times)
    out["finite"] = bool(all(torch.isfinite(p).all() for p in params))
    return out


def _run_child(args: argparse.Namespace, name: str, cache: str, warm_only: bool) -> dict:
    env = dict(os.environ)
    env["TORCHINDUCTOR_CACHE_DIR"] = cache
    env["TRITON_CACHE_DIR"] = os.path.join(cache, "triton")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--device", args.device]
    cmd += ["--steps", str(args.steps)] + (["--warm-only"] if warm_only else [])
    env["GRADKIT_BENCH_LAYERS"] = str(args.layers)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - t0
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        err = (res.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"rc={res.returncode}: {err[:200]}", "process_s": wall}
    row = json.loads(lines[-1])
    row["process_s"] = wall
    row["recompile_warnings"] = res.stderr.count("recompile_limit") + res.stderr.count(
        "cache_size_limit"
    )
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument(
        "--optimizers",
        default=",".join(DEFAULT_OPTIMIZERS),
        help=f"comma-separated, of {', '.join(OPTIMIZERS)}",
    )
    ap.add_argument(
        "--layers", type=int, default=LAYERS, help="transformer blocks (12: 150 tensors)"
    )
    ap.add_argument("--steps", type=int, default=1000, help="length of the scheduled run")
    ap.add_argument("--json", default=None, help="write header and rows here")
    ap.add_argument("--label", default="", help="a note stored in the JSON header")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per child process")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--warm-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.device, args.steps, args.warm_only)), flush=True)
        return
    import torch

    header = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": args.device,
        "machine": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "torch": torch.__version__,
        "tensors": len(shapes(args.layers)),
        "params": sum(torch.Size(s).numel() for s in shapes(args.layers)),
        "steps": args.steps,
        "label": args.label,
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
    }
    if args.device.startswith("cuda"):
        header["gpu"] = torch.cuda.get_device_name(0)
    print(json.dumps(header), flush=True)
    rows = []
    for name in [n for n in args.optimizers.split(",") if n]:
        cache = tempfile.mkdtemp(prefix="gradkit_inductor_")
        try:
            row = {"optimizer": name, **_run_child(args, name, cache, False)}
            if "error" not in row:
                warm = _run_child(args, name, cache, True)
                row["warm_s"] = warm.get("first_s")
                row["warm_step2_s"] = warm.get("step2_s")
                row["warm_graphs"] = warm.get("graphs_first")
                if "error" in warm:
                    row["warm_error"] = warm["error"]
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print(
        f"{header['device']} ({header.get('gpu', header['cpu'])}, {header['cores']} cores), "
        f"torch {header['torch']}, {header['tensors']} tensors, {header['params'] / 1e6:.2f}M "
        f"params, {args.steps}-step cosine run, {header['date']}"
    )
    cols = ("cold s", "warm s", "2nd inst s", "graphs", "run graphs", "breaks", "max later s")
    cols += ("ms/step (min)",)
    print(f"{'optimizer':10s}" + "".join(f"{c:>14s}" for c in cols[:-1]) + f"{cols[-1]:>16s}")

    def pair(a: float | None, b: float | None) -> str:
        return "-" if a is None or b is None else f"{a:.2f}+{b:.2f}"

    for r in rows:
        if "error" in r:
            print(f"{r['optimizer']:10s} {r['error']}")
            continue
        cells = (
            pair(r["first_s"], r["step2_s"]),
            pair(r.get("warm_s"), r.get("warm_step2_s")),
            pair(r["second_s"], r["second_step2_s"]),
            str(r["graphs"]),
            str(r["run_graphs"]),
            str(r["graph_breaks"]),
            f"{r['max_run_step_s']:.2f}",
            f"{r['ms_step']:.2f} ({r['ms_step_min']:.2f})",
        )
        print(
            f"{r['optimizer']:10s}" + "".join(f"{c:>14s}" for c in cells[:-1]) + f"{cells[-1]:>16s}"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"header": header, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
