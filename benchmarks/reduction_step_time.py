"""Step time of the optimizers with per-tensor reductions, interleaved, against the libraries.

AdamP, SGDP, NovoGrad, MARS, Stable-SPAM, Gravity and Ranger21 reduce per tensor (or per row).
For each, every row below steps its own copy of the same parameter set with fixed random
gradients, and the rows are timed in interleaved rounds (each round: every row in turn,
``--steps`` steps each, median per row), so that a change in the machine's load hits all rows alike; per round each row's
time is divided by the fastest library row's of that round, and the table gives the median
over rounds of those ratios and of the times, and the minor page faults per timed step (on a
CPU, re-allocated temporaries that the allocator had handed back to the kernel cost more than
their arithmetic; see docs/benchmarks.md).

Rows: gradkit's default path (``fused=None``: the eager per-tensor path on a CPU, the compiled
flat path on CUDA), ``fused="flat"`` (flat buffers, eager: on a CPU the per-tensor form on views),
``fused=True`` (flat buffers, compiled, segmented reductions; warmed up before timing, its
compile time is in ``first_step_latency.py``), and pytorch-optimizer's and torch-optimizer's
implementations (``step_time.MAPPING``).

Usage:
    python benchmarks/reduction_step_time.py                     # CPU, 1 thread, 150 tensors
    python benchmarks/reduction_step_time.py --set gpt2-scaled   # 5.3M parameters, 52 tensors
    python benchmarks/reduction_step_time.py --optimizers adamp --rounds 9 --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from collections.abc import Callable
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from first_step_latency import shapes as gpt_like_shapes  # noqa: E402
from gradient_replay import stepper  # noqa: E402
from interleaved_timing import emitter, summarize, time_interleaved, write_json  # noqa: E402
from step_time import MAPPING, gpt2_shapes, make_params  # noqa: E402

import gradkit  # noqa: E402

OPTIMIZERS = ("adamp", "sgdp", "novograd", "mars", "stable_spam", "gravity", "ranger21")
SETS = {
    "gpt-like": lambda: gpt_like_shapes(12),
    "gpt2-scaled": lambda: gpt2_shapes(width=256, layers=4, vocab=8192, ctx=256),
}


def _rows(name: str, device: torch.device) -> dict[str, Callable[[list], Any]]:
    hp, libs = MAPPING[name]
    info = {i.name: i for i in gradkit.list_optimizers()}[name]
    gk_hp = {k: v for k, v in hp.items() if k in info.defaults}
    rows: dict[str, Callable[[list], Any]] = {}
    for label, fused in (("default", None), ('fused="flat"', "flat"), ("fused=True", True)):
        rows[f"gradkit {label}"] = lambda ps, f=fused, c=info.cls, h=gk_hp: c(ps, fused=f, **h)
    for label, make in libs.items():
        rows[label] = lambda ps, m=make, h=hp: m(ps, dict(h))
    return rows


def bench(name: str, shapes, device: torch.device, rounds: int, steps: int) -> list[dict]:
    steppers: dict[str, Callable[[], None]] = {}
    errors: dict[str, str] = {}
    for label, make in _rows(name, device).items():
        params = make_params(shapes, device)
        try:
            opt = make(params)
            step = stepper(opt, params)
            for _ in range(3):  # state allocation, and compiling for fused=True
                step()
            steppers[label] = step
        except Exception as exc:  # noqa: BLE001 (a library failing is reported, not fatal)
            errors[label] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
    times, faults = time_interleaved(steppers, device, rounds, steps)
    libs = [label for label in steppers if not label.startswith("gradkit")]
    out = summarize(name, times, faults, libs)
    out += [{"optimizer": name, "row": label, "error": err} for label, err in errors.items()]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    ap.add_argument("--set", default="gpt-like", choices=sorted(SETS))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=5, help="steps per row and round")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--jsonl", default=None, help="append each row here as soon as it is measured")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shapes = SETS[args.set]()
    header = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": args.device,
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "load_avg": os.getloadavg(),
        "torch": torch.__version__,
        "set": args.set,
        "tensors": len(shapes),
        "params": sum(torch.Size(s).numel() for s in shapes),
        "command": " ".join(["python"] + sys.argv),
    }
    emit = emitter(args.jsonl)
    emit(header)
    rows = []
    for name in [n for n in args.optimizers.split(",") if n]:
        for row in bench(name, shapes, device, args.rounds, args.steps):
            emit(row)
            rows.append(row)
    print()
    print(
        f"{header['device']}, {args.threads} thread(s), torch {header['torch']}, "
        f"{header['tensors']} tensors, {header['params'] / 1e6:.2f}M params, {header['date']}"
    )
    print(
        f"{'optimizer':12s} {'row':30s} {'ms/step':>9s} {'vs fastest library':>19s}"
        f" {'page faults/step':>17s}"
    )
    for r in rows:
        if "error" in r:
            print(f"{r['optimizer']:12s} {r['row']:30s} {r['error']}")
            continue
        vs = r.get("vs_fastest_library")
        print(
            f"{r['optimizer']:12s} {r['row']:30s} {r['ms']:9.2f} "
            f"{(f'{vs:.2f}' if vs is not None else '-'):>19s} {r['page_faults_per_step']:17.0f}"
        )
    if args.json:
        write_json(args.json, header, rows)


if __name__ == "__main__":
    main()
