"""Milliseconds per optimizer step on a GPT-2-small parameter set, gradkit against libraries.

On CUDA the parameter set is GPT-2 small's (124M fp32 parameters); on CPU a scaled-down one
(width 256, 4 layers). Every optimizer steps the same shapes with fixed random gradients; the
step is timed alone (CUDA events or a wall clock around ``optimizer.step()``), after warm-up
(which also absorbs torch.compile's compile time), as the median of many steps.

On CUDA each row also gets its ratio to the memory-bandwidth floor: the bytes a single pass must
move, ``(2 + 1 + 2 * state_buffers) * 4`` bytes per fp32 parameter (read param and grad, write
param, read and write each elementwise state buffer; AdamW: 28), over the device-to-device copy
bandwidth this script measures.

Usage:
    python benchmarks/step_time.py                       # CUDA if present, else CPU
    python benchmarks/step_time.py --device cpu --optimizers adamw,sgd --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from gradient_replay import stepper

import gradkit

# gradkit registry name -> (hyperparameters shared by all rows, {library row: constructor}).
# A constructor takes (params, hp) and returns an optimizer; a library that is not installed,
# or a name that is not registered yet, is skipped.


def _po(name: str, **extra: Any) -> Callable:
    def make(params, hp):
        import pytorch_optimizer

        return getattr(pytorch_optimizer, name)(params, **{**hp, **extra})

    return make


def _to(name: str, **extra: Any) -> Callable:
    def make(params, hp):
        import torch_optimizer

        return getattr(torch_optimizer, name)(params, **{**hp, **extra})

    return make


def _lion_pytorch(params, hp):
    from lion_pytorch import Lion

    return Lion(params, **hp)


def _heavyball(name: str, **extra: Any) -> Callable:
    def make(params, hp):
        import heavyball
        import heavyball.utils

        # heavyball compiles its step by default with max-autotune (minutes of autotuning);
        # "default" mode compiles without autotuning, like gradkit's compiled path.
        heavyball.utils.compile_mode = "default"
        return getattr(heavyball, name)(params, **{**hp, **extra})

    return make


def _torch(name: str, **extra: Any) -> Callable:
    return lambda params, hp: getattr(torch.optim, name)(params, **{**hp, **extra})


ADAM_HP = {"lr": 1e-3, "weight_decay": 0.01}
MAPPING: dict[str, tuple[dict[str, Any], dict[str, Callable]]] = {
    "adamw": (
        ADAM_HP,
        {
            "torch.AdamW(for-loop)": _torch("AdamW", foreach=False),
            "torch.AdamW(foreach)": _torch("AdamW", foreach=True),
            "torch.AdamW(fused)": _torch("AdamW", fused=True),
            "torch.AdamW(foreach, compiled step)": _torch("AdamW", foreach=True),
            "pytorch_optimizer.AdamW": _po("AdamW"),
            "heavyball.AdamW": _heavyball("AdamW"),
        },
    ),
    "sgd": (
        {"lr": 1e-2, "momentum": 0.9, "weight_decay": 0.01},
        {
            "torch.SGD(for-loop)": _torch("SGD", foreach=False),
            "torch.SGD(foreach)": _torch("SGD", foreach=True),
            "torch.SGD(fused)": _torch("SGD", fused=True),
            "torch.SGD(foreach, compiled step)": _torch("SGD", foreach=True),
        },
    ),
    "adam": (ADAM_HP, {"torch.Adam(fused)": _torch("Adam", fused=True)}),
    "amsgrad": (
        {"lr": 1e-3, "weight_decay": 0.0},
        {"torch.Adam(amsgrad, fused)": _torch("Adam", amsgrad=True, fused=True)},
    ),
    "lion": (
        {"lr": 1e-4, "weight_decay": 0.01},
        {"pytorch_optimizer.Lion": _po("Lion"), "lion_pytorch.Lion": _lion_pytorch},
    ),
    "adamp": (
        ADAM_HP,
        {"pytorch_optimizer.AdamP": _po("AdamP"), "torch_optimizer.AdamP": _to("AdamP")},
    ),
    "sgdp": (
        {"lr": 1e-2, "momentum": 0.9, "weight_decay": 0.01},
        {"pytorch_optimizer.SGDP": _po("SGDP"), "torch_optimizer.SGDP": _to("SGDP")},
    ),
    "diffgrad": (
        ADAM_HP,
        {
            "pytorch_optimizer.DiffGrad": _po("DiffGrad"),
            "torch_optimizer.DiffGrad": _to("DiffGrad"),
        },
    ),
    "madgrad": (
        {"lr": 1e-3, "weight_decay": 0.0},
        {"pytorch_optimizer.MADGRAD": _po("MADGRAD"), "torch_optimizer.MADGRAD": _to("MADGRAD")},
    ),
    "ademamix": (ADAM_HP, {"pytorch_optimizer.AdEMAMix": _po("AdEMAMix")}),
    "mars": (ADAM_HP, {"pytorch_optimizer.MARS": _po("MARS")}),
    "stable_spam": (ADAM_HP, {"pytorch_optimizer.StableSPAM": _po("StableSPAM")}),
    "ranger21": (
        ADAM_HP,
        {"pytorch_optimizer.Ranger21": _po("Ranger21", num_iterations=1000)},
    ),
    "gravity": ({"lr": 1e-2}, {"pytorch_optimizer.Gravity": _po("Gravity")}),
    "novograd": (
        ADAM_HP,
        {
            "pytorch_optimizer.NovoGrad": _po("NovoGrad"),
            "torch_optimizer.NovoGrad": _to("NovoGrad"),
        },
    ),
}


# ---------------------------------------------------------------------------- parameter sets
def gpt2_shapes(width: int = 768, layers: int = 12, vocab: int = 50257, ctx: int = 1024):
    """Parameter shapes of GPT-2 (small by default): 124M parameters."""
    shapes = [(vocab, width), (ctx, width)]
    for _ in range(layers):
        shapes += [(width,), (width,)]  # ln_1
        shapes += [(width, 3 * width), (3 * width,)]  # c_attn
        shapes += [(width, width), (width,)]  # attn c_proj
        shapes += [(width,), (width,)]  # ln_2
        shapes += [(width, 4 * width), (4 * width,)]  # c_fc
        shapes += [(4 * width, width), (width,)]  # mlp c_proj
    shapes += [(width,), (width,)]  # ln_f
    return shapes


def make_params(shapes, device, seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    params = []
    for s in shapes:
        p = torch.nn.Parameter((torch.randn(s, generator=gen) * 0.02).to(device))
        p.grad = (torch.randn(s, generator=gen) * 1e-3).to(device)
        params.append(p)
    return params


# ---------------------------------------------------------------------------- timing
def copy_bandwidth(device: torch.device) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    n = 256 * 1024 * 1024  # 1 GiB of fp32
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(3):
        dst.copy_(src)
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    return 2 * n * 4 / statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def first_step_seconds(step: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of the very first ``step()`` (state allocation and any compilation)."""
    _sync(device)
    t0 = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - t0


def time_steps(step: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> float:
    """Median milliseconds of ``step()``."""
    for _ in range(warmup):
        step()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        for _ in range(iters):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def state_buffers(opt: torch.optim.Optimizer, params) -> int:
    """Elementwise state buffers per parameter (tensors with as many elements as the param)."""
    counts = []
    for p in params:
        st = opt.state.get(p, {})
        counts.append(
            sum(1 for v in st.values() if torch.is_tensor(v) and v.numel() == p.numel() > 1)
        )
    return max(counts) if counts else 0


def bench_one(label, make, shapes, device, warmup, iters, compile_step=False) -> dict[str, Any]:
    params = make_params(shapes, device)
    row: dict[str, Any] = {"row": label}
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    try:
        opt = make(params)
        if compile_step:
            step = torch.compile(opt.step)
        else:
            step = stepper(opt, params)  # restores the gradients (heavyball clears them)
        row["first_step_s"] = first_step_seconds(step, device)
        row["ms"] = time_steps(step, device, warmup, iters)
        row["state_buffers"] = state_buffers(opt, params)
        row["compiled_graphs"] = counters["stats"]["unique_graphs"] - graphs
    except Exception as exc:  # noqa: BLE001 (a library failing is reported, not fatal)
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
    del params
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--optimizers", default="", help="comma-separated gradkit names (default all)")
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument("--jsonl", default=None, help="append each row here as soon as it is measured")
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument(
        "--exclude", default="", help="comma-separated substrings: skip library rows naming one"
    )
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    shapes = gpt2_shapes() if cuda else gpt2_shapes(width=256, layers=4, vocab=8192, ctx=256)
    n_params = sum(torch.Size(s).numel() for s in shapes)
    iters = args.iters or (100 if cuda else 20)
    warmup = 8 if cuda else 3
    registered = {i.name: i for i in gradkit.list_optimizers()}
    wanted = [n for n in args.optimizers.split(",") if n] or list(MAPPING)
    bandwidth = copy_bandwidth(device) if cuda else None
    header = {
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "params": n_params,
        "copy_bandwidth_GBps": bandwidth / 1e9 if bandwidth else None,
    }
    rows: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        print(json.dumps(row), flush=True)
        if args.jsonl:  # a killed run keeps every finished row
            with open(args.jsonl, "a") as fh:
                fh.write(json.dumps(row) + "\n")

    emit(header)
    for name in wanted:
        if name not in MAPPING:
            print(f"# {name}: no library counterpart in the mapping table, skipped")
            continue
        if name not in registered:
            print(f"# {name}: not registered in gradkit yet, skipped")
            continue
        info = registered[name]
        if info.needs_closure:
            print(f"# {name}: needs a closure, skipped")
            continue
        hp, libs = MAPPING[name]
        gk_hp = {k: v for k, v in hp.items() if k in info.defaults}
        variants = [("eager", False)]
        chain = info.cls(make_params([(2,)], device), **gk_hp).transform
        if chain.flat_ok:
            # the default on CUDA is the compiled flat path (for compile_ok chains); on CPU the
            # default is eager until a run has paid for compiling, then the same compiled flat
            # path (`fused=True` here; elementwise_step_time.py times the default past its switch)
            if cuda and chain.compile_ok:
                variants.append(("default, compiled flat", None))
            else:
                variants.append(("fused=True", True))
        for vlabel, fused in variants:
            row = bench_one(
                f"gradkit.{name} ({vlabel})",
                lambda ps, f=fused, c=info.cls, h=gk_hp: c(ps, fused=f, **h),
                shapes, device, warmup, iters,
            )  # fmt: skip
            row["optimizer"] = name
            rows.append(row)
            emit(row)
        for label, make in libs.items():
            if any(x and x in label for x in args.exclude.split(",")):
                continue
            row = bench_one(
                label, lambda ps, m=make, h=hp: m(ps, dict(h)), shapes, device, warmup, iters,
                compile_step="compiled" in label,
            )  # fmt: skip
            row["optimizer"] = name
            rows.append(row)
            emit(row)
    ref = next((r.get("ms") for r in rows if r["row"] == "torch.AdamW(fused)"), None)
    for r in rows:
        if "ms" not in r:
            continue
        r["vs_torch_fused_adamw"] = r["ms"] / ref if ref else None
        if bandwidth:
            nbytes = (3 + 2 * r["state_buffers"]) * 4 * n_params
            r["floor_ms"] = nbytes / bandwidth * 1e3
            r["vs_floor"] = r["ms"] / r["floor_ms"]
    print()
    print(f"{header['device']}, torch {header['torch']}, {n_params / 1e6:.1f}M fp32 params", end="")
    print(f", copy bandwidth {bandwidth / 1e9:.0f} GB/s" if bandwidth else "")
    print(
        f"{'optimizer':12s} {'row':40s} {'ms/step':>9s} {'/fusedAdamW':>11s} {'/floor':>7s}"
        f" {'first step s':>12s}"
    )
    for r in rows:
        if "ms" not in r:
            print(f"{r['optimizer']:12s} {r['row']:40s} {r['error']}")
            continue
        vs = r.get("vs_torch_fused_adamw")
        fl = r.get("vs_floor")
        print(
            f"{r['optimizer']:12s} {r['row']:40s} {r['ms']:9.3f} "
            f"{(f'{vs:.2f}' if vs else '-'):>11s} {(f'{fl:.2f}' if fl else '-'):>7s}"
            f" {r['first_step_s']:12.2f}"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"header": header, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
