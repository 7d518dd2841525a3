"""Step time of elementwise optimizers on a CPU: gradkit's default path against the libraries and
against the in-place bandwidth floor, rows timed in interleaved rounds.

For AdamW, Adam, AMSGrad, SGD (momentum), Lion, diffGrad, MADGRAD and AdEMAMix, every row steps
its own copy of the same parameter set with fixed random gradients (``interleaved_timing``:
rounds of every row in turn, ratio to the fastest library row per round, median over rounds).

Rows:

- ``gradkit default`` (``fused=None``): on a CPU the eager path until the group's eager steps
  have cost what compiling costs (``gradkit.core.optimizer.CPU_COMPILE_AFTER_ELEMENT_STEPS``),
  then the compiled flat step (groups under ``CPU_COMPILE_MIN_ELEMENTS`` stay eager). It is stepped past that switch before timing; the row records
  how many eager steps came first (``eager_steps``) and the wall time of the step that compiled
  (``switch_s``: about 12 s with an empty inductor cache, 2.5 s with a warm one; set
  ``TORCHINDUCTOR_CACHE_DIR`` to an empty folder to measure it cold).
- ``gradkit fused=False``: the eager reference path.
- the libraries of ``step_time.MAPPING`` (torch.optim's foreach and fused kernels, torch.compile
  over torch's foreach step, pytorch-optimizer, torch-optimizer, lion-pytorch, heavyball).

The floor: the bytes one pass must move, ``(3 + 2 * state buffers) * 4`` per fp32 parameter
(read param and grad, write param, read and write each elementwise state buffer; AdamW 28), over
the in-place bandwidth this script measures on the set's size with the same threads (the best
median of ``a.mul_(c)``, ``a.add_(b)`` and ``a.addcmul_(b, c)``, counting bytes read plus
written; an in-place write needs no read-for-ownership, so this is the bandwidth an optimizer
step can reach).

Usage:
    python benchmarks/elementwise_step_time.py --set large        # 20 tensors, 21M parameters
    python benchmarks/elementwise_step_time.py --set gpt-like --optimizers adamw,sgd --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import sys
import time
import types
from collections.abc import Callable
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from first_step_latency import shapes as gpt_like_shapes  # noqa: E402
from gradient_replay import stepper  # noqa: E402
from interleaved_timing import emitter, summarize, time_interleaved, write_json  # noqa: E402
from step_time import MAPPING, gpt2_shapes, make_params, state_buffers, time_steps  # noqa: E402

import gradkit  # noqa: E402
import gradkit.core.optimizer as core_optimizer  # noqa: E402

OPTIMIZERS = ("adamw", "adam", "amsgrad", "sgd", "lion", "diffgrad", "madgrad", "ademamix")
SETS = {
    "gpt-like": lambda: gpt_like_shapes(12),  # 150 tensors, 1.0M
    "gpt2-scaled": lambda: gpt2_shapes(width=256, layers=4, vocab=8192, ctx=256),  # 52, 5.3M
    "large": lambda: [(1024, 2048), (2048,)] * 10,  # 20 tensors, 21.0M
}


def inplace_bandwidth(numel: int, repeats: int = 15) -> float:
    """Bytes/s (read + written) of the fastest of three in-place kernels over ``numel`` floats."""
    a, b, c = (torch.randn(numel) for _ in range(3))
    kernels = {
        "mul_": (lambda: a.mul_(1.0000001), 8),
        "add_": (lambda: a.add_(b, alpha=1e-9), 12),
        "addcmul_": (lambda: a.addcmul_(b, c, value=1e-9), 16),
    }
    cpu = torch.device("cpu")
    return max(
        bytes_per * numel / (time_steps(fn, cpu, 3, repeats) / 1e3)
        for fn, bytes_per in kernels.values()
    )


def _rows(name: str, exclude: list[str]) -> dict[str, tuple[Callable[[list], Any], bool]]:
    """label -> (make(params) -> optimizer, compile torch's step)."""
    hp, libs = MAPPING[name]
    info = {i.name: i for i in gradkit.list_optimizers()}[name]
    gk_hp = {k: v for k, v in hp.items() if k in info.defaults}
    rows: dict[str, tuple[Callable[[list], Any], bool]] = {
        "gradkit default": (lambda ps: info.cls(ps, **gk_hp), False),
        "gradkit fused=False": (lambda ps: info.cls(ps, fused=False, **gk_hp), False),
    }
    for label, make in libs.items():
        if any(x in label for x in exclude):
            continue
        rows[label] = (lambda ps, m=make, h=hp: m(ps, dict(h)), "compiled step" in label)
    return rows


def _switch_past_the_threshold(step: Callable[[], None], opt: Any, numel: int) -> dict[str, Any]:
    """Step gradkit's default until it has switched to the compiled flat step (and two steps
    more); the number of eager steps before the switch and the seconds of the switching step."""
    eager_steps, switch_s = 0, None
    if numel < core_optimizer.CPU_COMPILE_MIN_ELEMENTS:
        return {"eager_steps": None, "switch_s": None}  # never switches: the eager default
    limit = -(-core_optimizer.CPU_COMPILE_AFTER_ELEMENT_STEPS // numel) + 5
    while not opt._flat:
        t0 = time.perf_counter()
        step()
        if opt._flat:
            switch_s = time.perf_counter() - t0
        else:
            eager_steps += 1
            if eager_steps > limit:
                raise RuntimeError("the default never switched to the compiled step")
    for _ in range(2):
        step()
    return {"eager_steps": eager_steps, "switch_s": switch_s}


def bench(name: str, shapes, rounds: int, steps: int, exclude: list[str], floor_bw: float):
    device = torch.device("cpu")
    steppers: dict[str, Callable[[], None]] = {}
    extra: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    buffers = None
    numel = sum(torch.Size(s).numel() for s in shapes)
    for label, (make, compile_step) in _rows(name, exclude).items():
        params = make_params(shapes, device)
        try:
            opt = make(params)
            if compile_step:  # torch.compile over the library's own step
                step = stepper(types.SimpleNamespace(step=torch.compile(opt.step)), params)
            else:
                step = stepper(opt, params)
            t0 = time.perf_counter()
            step()
            extra[label] = {"first_step_s": time.perf_counter() - t0}
            if label == "gradkit default":
                extra[label].update(_switch_past_the_threshold(step, opt, numel))
            for _ in range(3):
                step()
            if label == "gradkit fused=False":
                buffers = state_buffers(opt, params)
            steppers[label] = step
        except Exception as exc:  # noqa: BLE001 (a library failing is reported, not fatal)
            errors[label] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
        gc.collect()
    times, faults = time_interleaved(steppers, device, rounds, steps)
    libs = [label for label in steppers if not label.startswith("gradkit")]
    out = summarize(name, times, faults, libs)
    for row in out:
        row.update(extra.get(row["row"], {}))
        if buffers is not None:
            row["state_buffers"] = buffers
            row["floor_ms"] = (3 + 2 * buffers) * 4 * numel / floor_bw * 1e3
            row["vs_floor"] = row["ms"] / row["floor_ms"]
    out += [{"optimizer": name, "row": label, "error": err} for label, err in errors.items()]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    ap.add_argument("--set", default="large", choices=sorted(SETS))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=5, help="steps per row and round")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument(
        "--exclude", default="for-loop", help="comma-separated substrings: skip library rows"
    )
    ap.add_argument("--json", default=None, help="write header and rows here at the end")
    ap.add_argument("--jsonl", default=None, help="append each row here as soon as it is measured")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = SETS[args.set]()
    numel = sum(torch.Size(s).numel() for s in shapes)
    bandwidth = inplace_bandwidth(numel)
    header = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "load_avg": os.getloadavg(),
        "torch": torch.__version__,
        "set": args.set,
        "tensors": len(shapes),
        "params": numel,
        "inplace_bandwidth_GBps": bandwidth / 1e9,
        "cpu_compile_after_element_steps": core_optimizer.CPU_COMPILE_AFTER_ELEMENT_STEPS,
        "inductor_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR", "default"),
        "command": " ".join(["python"] + sys.argv),
    }
    emit = emitter(args.jsonl)
    emit(header)
    rows = []
    exclude = [x for x in args.exclude.split(",") if x]
    for name in [n for n in args.optimizers.split(",") if n]:
        for row in bench(name, shapes, args.rounds, args.steps, exclude, bandwidth):
            emit(row)
            rows.append(row)
    print()
    print(
        f"CPU, {args.threads} thread(s), torch {header['torch']}, {header['tensors']} tensors, "
        f"{numel / 1e6:.1f}M params, in-place bandwidth {bandwidth / 1e9:.1f} GB/s, "
        f"{header['date']}"
    )
    print(
        f"{'optimizer':10s} {'row':38s} {'ms/step':>8s} {'/fastest lib':>12s} {'/floor':>7s}"
        f" {'faults/step':>11s}  first step"
    )
    for r in rows:
        if "error" in r:
            print(f"{r['optimizer']:10s} {r['row']:38s} {r['error']}")
            continue
        vs = r.get("vs_fastest_library")
        fl = r.get("vs_floor")
        first = f"{r['first_step_s']:.2f} s"
        if r.get("switch_s") is not None:
            first += f"; {r['eager_steps']} eager steps, then compiled in {r['switch_s']:.1f} s"
        elif "switch_s" in r:
            first += "; stays eager (group under CPU_COMPILE_MIN_ELEMENTS)"
        print(
            f"{r['optimizer']:10s} {r['row']:38s} {r['ms']:8.2f} "
            f"{(f'{vs:.2f}' if vs is not None else '-'):>12s} "
            f"{(f'{fl:.2f}' if fl is not None else '-'):>7s} "
            f"{r['page_faults_per_step']:11.0f}  {first}"
        )
    if args.json:
        write_json(args.json, header, rows)


if __name__ == "__main__":
    main()
