"""Curvature benchmark: gradkit vs PyHessian and hessian-eigenthings in the same run.

Measures, on an MLP of >= 1M parameters trained briefly on MNIST-1D (CPU is fine):

1. the cost of one Hessian-vector product in each library (and gradkit's three HVP paths:
   double backward with the cached gradient graph, without it, torch.func forward-over-reverse);
2. Hessian-vector products and seconds to reach the top Hessian eigenvalue to a relative
   accuracy ``--target`` (default 1e-3) of a tight reference. Each method's own stopping knob is
   swept (gradkit Lanczos ``tol``; PyHessian power iteration ``tol``; hessian-eigenthings
   Lanczos ``max_iter`` and power iteration ``tol``) and the cheapest setting that reaches the
   accuracy is reported, together with each library's default setting;
3. the Hessian trace: products, seconds, estimate and standard error (from the samples) for
   gradkit Hutchinson / Hutch++ stopped at ``--trace-tol`` relative standard error, PyHessian's
   trace (its own stopping rule) and hessian-eigenthings Hutchinson / Hutch++ at the same
   budget; plus the products each would need for ``--trace-tol`` relative standard error
   (samples scale as ``stderr^-2``). gradkit's ``tol`` is the half-width of a 95% interval
   (the ``half-width`` column), the other libraries' rules bound the standard error;
4. top-``k`` Lanczos (``--topk``, default 5): for each ``tol`` and reorthogonalisation mode
   (partial, the default; full, the former one), over ``--topk-seeds`` random starts: products,
   the largest relative error of the top-``k`` eigenvalues against a tight reference, the
   CPU seconds per step spent outside the Hessian-vector products (reorthogonalisation, the
   recurrence, the Ritz values, the final eigenvectors) as a fraction of one product's, and the
   full Gram-Schmidt passes per step. Run it with ``--threads 1`` (CPU time of spinning
   worker threads would count otherwise).

Run:  python benchmarks/curvature_bench.py [--quick] [--only-topk] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable

import torch
from torch import nn

from gradkit.bench.tasks.builtin.mnist1d import mnist1d_mlp
from gradkit.curvature import HessianOperator, hutchinson_trace, top_eigenpairs


def make_data(num_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    import mnist1d.data as md

    args = md.get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    ds = md.make_dataset(args)
    x = torch.tensor(ds["x"], dtype=torch.float32)
    y = torch.tensor(ds["y"], dtype=torch.long)
    x = (x - x.mean()) / x.std()
    return x, y


def make_model(hidden: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return mnist1d_mlp(hidden)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    loss = torch.tensor(0.0)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (128,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


REPEATS = 1


def timed_median(fn: Callable[[], object]) -> tuple[object, float]:
    """Run ``REPEATS`` times; the first result and the median wall time (the CPU may be shared)."""
    runs = [timed(fn) for _ in range(REPEATS)]
    times = sorted(t for _, t in runs)
    return runs[0][0], times[len(times) // 2]


def per_hvp_seconds(model, x, y, reps: int) -> dict[str, float]:
    """Median seconds per product, the libraries interleaved round-robin (same CPU load)."""
    import pyhessian
    from hessian_eigenthings import HessianOperator as HEOp
    from hessian_eigenthings import supervised_loss

    crit = nn.functional.cross_entropy
    fns: dict[str, Callable[[], object]] = {}
    for name, kw in [
        ("gradkit autograd, cached graph", {}),
        ("gradkit autograd, no cache", {"cache_graph": False}),
        ("gradkit torch.func jvp-of-grad", {"hvp_method": "func"}),
    ]:
        op = HessianOperator(model, crit, (x, y), **kw)
        v = [torch.randn_like(p) for p in op.params]
        fns[name] = lambda op=op, v=v: op.matvec(v)
    torch.manual_seed(0)
    ph = pyhessian.hessian(model, crit, data=(x, y), cuda=False)
    pv = [torch.randn_like(p) for p in ph.params]
    fns["PyHessian (cached graph)"] = lambda: pyhessian.hessian_vector_product(
        ph.gradsH, ph.params, pv
    )
    heop = HEOp(model, [(x, y)], supervised_loss(crit))
    vf = torch.randn(heop.size)
    fns["hessian-eigenthings"] = lambda: heop.matvec(vf)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()  # warm-up (builds the cached graphs)
    for _ in range(reps):
        for k, f in fns.items():
            times[k].append(timed(f)[1])
    ph.gradsH = None
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def count_pyhessian(fn: Callable[[], object]) -> tuple[object, int, float]:
    import sys

    import pyhessian  # noqa: F401

    phh = sys.modules["pyhessian.hessian"]  # the package re-exports the class under this name
    orig = phh.hessian_vector_product
    count = 0

    def counting(*a, **k):
        nonlocal count
        count += 1
        return orig(*a, **k)

    phh.hessian_vector_product = counting
    try:
        out, t = timed(fn)
    finally:
        phh.hessian_vector_product = orig
    return out, count, t


def he_operator(model, x, y):
    from hessian_eigenthings import HessianOperator as HEOp
    from hessian_eigenthings import supervised_loss

    op = HEOp(model, [(x, y)], supervised_loss(nn.functional.cross_entropy))
    count = {"n": 0}
    orig = op.matvec

    def counting(v):
        count["n"] += 1
        return orig(v)

    op.matvec = counting  # type: ignore[method-assign]
    return op, count


def top_eigenvalue_runs(model, x, y, ref: float, target: float) -> list[dict]:
    import hessian_eigenthings as he
    import pyhessian

    crit = nn.functional.cross_entropy
    rows: list[dict] = []

    def add(lib, setting, value, hvps, secs, default=False):
        err = abs(value - ref) / abs(ref)
        rows.append(
            dict(
                library=lib,
                setting=setting,
                value=value,
                rel_err=err,
                hvps=hvps,
                seconds=secs,
                reached=err <= target,
                default=default,
            )
        )

    for init in [None, "gradient"]:
        for tol in [1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4]:

            def run(tol=tol, init=init):
                op = HessianOperator(model, crit, (x, y))
                vals, _ = top_eigenpairs(op, k=1, tol=tol, max_iter=300, seed=0, init=init)
                return float(vals[0]), op.num_matvecs

            (val, n), t = timed_median(run)
            name = "gradkit Lanczos" + (", gradient start" if init else "")
            add(name, f"tol={tol:g}", val, n, t, default=tol == 1e-4 and init is None)
    for tol in [1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5]:

        def run_ph(tol=tol):
            torch.manual_seed(0)
            ph = pyhessian.hessian(model, crit, data=(x, y), cuda=False)
            vals, _ = ph.eigenvalues(maxIter=1000, tol=tol, top_n=1)
            ph.gradsH = None
            return float(vals[0])

        val, n, t = count_pyhessian(run_ph)
        if REPEATS > 1:
            _, t = timed_median(run_ph)
        add("PyHessian power iteration", f"tol={tol:g}", val, n, t, default=tol == 1e-3)
    for m in [2, 5, 8, 10, 12, 15, 20, 25, 30, 40, 60]:

        def run_he(m=m):
            op, count = he_operator(model, x, y)
            res = he.lanczos(op, k=1, max_iter=m, seed=0, which="LA")
            return float(res.eigenvalues[0]), count["n"]

        (val, n), t = timed_median(run_he)
        add("hessian-eigenthings Lanczos", f"max_iter={m}", val, n, t, default=m == 2)
        if abs(val - ref) / abs(ref) <= target / 10:
            break
    for tol in [1e-2, 3e-3, 1e-3, 3e-4, 1e-4]:

        def run_hp(tol=tol):
            op, count = he_operator(model, x, y)
            out = he.power_iteration_one(op, max_iter=1000, tol=tol, seed=0)
            return float(out[0]), count["n"]

        (val, n), t = timed_median(run_hp)
        add("hessian-eigenthings power iteration", f"tol={tol:g}", val, n, t, default=tol == 1e-4)
    return rows


def oracle_counts(model, x, y, ref: float, targets: list[float], seeds: int, steps: int) -> dict:
    """Products until the estimate is within each target, with an oracle stopping rule.

    Per seed, one run records the estimate after every product: the Ritz value for Lanczos
    (random start, as gradkit's default and hessian-eigenthings' Lanczos; gradient start), the
    Rayleigh quotient for power iteration (PyHessian, hessian-eigenthings power iteration).
    Separates the algorithms from the libraries' stopping rules. Mean over seeds.
    """
    from gradkit.curvature._utils import FlatMatvec, flatten
    from gradkit.curvature.lanczos import _Lanczos, _random_unit

    crit = nn.functional.cross_entropy
    op = HessianOperator(model, crit, (x, y))
    n = op.dim
    mv = FlatMatvec(op)
    g = flatten(op.gradient())
    out: dict[str, list[list[int]]] = {}
    for seed in range(seeds):
        gen = torch.Generator().manual_seed(1000 + seed)
        r = _random_unit(n, gen, torch.float32, torch.device("cpu"))
        for name, v0 in [
            ("Lanczos, random start", r),
            ("Lanczos, gradient start", r + g / g.norm()),
        ]:
            lz = _Lanczos(mv, n, v0.clone(), capacity=steps + 1, gen=gen)
            errs = []
            for _ in range(steps):
                lz.step()
                errs.append(abs(float(lz.ritz()[0].max()) - ref) / abs(ref))
            out.setdefault(name, []).append(
                [next((i + 1 for i, e in enumerate(errs) if e <= t), steps + 1) for t in targets]
            )
        v = r.clone()
        errs = []
        for _ in range(3 * steps):
            hv = mv(v)
            errs.append(abs(float(v @ hv) - ref) / abs(ref))
            v = hv / hv.norm()
        out.setdefault("power iteration", []).append(
            [next((i + 1 for i, e in enumerate(errs) if e <= t), 3 * steps + 1) for t in targets]
        )
    return {k: [sum(c[j] for c in v) / len(v) for j in range(len(targets))] for k, v in out.items()}


def trace_runs(model, x, y, rel_tol: float, max_samples: int, sketch: int) -> list[dict]:
    import hessian_eigenthings as he
    import pyhessian

    crit = nn.functional.cross_entropy
    rows: list[dict] = []

    def add(lib, setting, value, stderr, hvps, secs, samples, half_width=None):
        # products for a relative standard error of rel_tol: the residual samples scale as 1/m
        fixed = hvps - samples
        need = fixed + samples * (stderr / (rel_tol * abs(value))) ** 2 if samples > 1 else hvps
        rows.append(
            dict(
                library=lib,
                half_width=half_width,
                setting=setting,
                value=value,
                stderr=stderr,
                hvps=hvps,
                seconds=secs,
                hvps_for_target=need,
                seconds_for_target=secs / hvps * need,
            )
        )

    def gk(method):
        op = HessianOperator(model, crit, (x, y))
        kw = {"sketch_size": sketch} if method == "hutch++" else {}
        return hutchinson_trace(
            op, num_samples=max_samples, tol=rel_tol, method=method, seed=0, **kw
        )

    est, t = timed(lambda: gk("hutchinson"))
    add(
        "gradkit Hutchinson",
        f"tol={rel_tol:g}",
        est.value,
        est.stderr,
        est.num_matvecs,
        t,
        est.samples.numel(),
        est.half_width,
    )
    budget = est.num_matvecs
    est2, t = timed(lambda: gk("hutch++"))
    add(
        "gradkit Hutch++",
        f"sketch={sketch}, tol={rel_tol:g}",
        est2.value,
        est2.stderr,
        est2.num_matvecs,
        t,
        est2.samples.numel(),
        est2.half_width,
    )

    def run_ph():
        torch.manual_seed(0)
        ph = pyhessian.hessian(model, crit, data=(x, y), cuda=False)
        out = ph.trace(maxIter=max_samples, tol=1e-3)
        ph.gradsH = None
        return out

    samples, n, t = count_pyhessian(run_ph)
    s = torch.tensor(samples, dtype=torch.float64)
    se = float(s.std() / len(samples) ** 0.5) if len(samples) > 1 else float("inf")
    add(
        "PyHessian trace",
        "maxIter, tol=1e-3 (default rule)",
        float(s.mean()),
        se,
        n,
        t,
        len(samples),
    )

    def run_he(method):
        op, count = he_operator(model, x, y)
        if method == "hutchinson":
            res = he.hutchinson(op, num_samples=budget, seed=0)
        else:
            res = he.hutch_plus_plus(op, num_matvecs=max(budget, 6), seed=0)
        return res, count["n"]

    (res, n), t = timed(lambda: run_he("hutchinson"))
    add(
        "hessian-eigenthings Hutchinson",
        f"num_samples={budget}",
        float(res.estimate),
        float(res.stderr),
        n,
        t,
        n,
    )

    def run_he_pp(budget):
        op, count = he_operator(model, x, y)
        return he.hutch_plus_plus(op, num_matvecs=budget, seed=0), count["n"]

    b2 = max(est2.num_matvecs, 6)
    (res, n), t = timed(lambda: run_he_pp(b2))
    add(
        "hessian-eigenthings Hutch++",
        f"num_matvecs={b2} (gradkit Hutch++ budget)",
        float(res.estimate),
        float(res.stderr),
        n,
        t,
        n - 2 * (b2 // 3),
    )
    (res, n), t = timed(lambda: run_he("hutch++"))
    add(
        "hessian-eigenthings Hutch++",
        f"num_matvecs={max(budget, 6)}",
        float(res.estimate),
        float(res.stderr),
        n,
        t,
        n - 2 * (max(budget, 6) // 3),
    )
    return rows


class _TimedOperator:
    """Wraps a curvature operator; accumulates the CPU seconds (``time.process_time``: robust
    to other processes on a shared machine; run with ``--threads 1`` so that idle-spinning
    worker threads are not counted) spent inside ``matvec``."""

    def __init__(self, op: HessianOperator) -> None:
        self.op, self.params, self.seconds = op, op.params, 0.0

    @property
    def dim(self) -> int:
        return self.op.dim

    @property
    def num_matvecs(self) -> int:
        return self.op.num_matvecs

    def gradient(self):
        return self.op.gradient()

    def matvec(self, v):
        t0 = time.process_time()
        out = self.op.matvec(v)
        self.seconds += time.process_time() - t0
        return out


def topk_runs(model, x, y, k: int, tols: list[float], seeds: int) -> tuple[list[dict], float]:
    """Top-k Lanczos per tol / reorthogonalisation mode / seed; returns rows and the reference
    lambda_k."""
    import gradkit.curvature.lanczos as lzmod

    crit = nn.functional.cross_entropy
    op = HessianOperator(model, crit, (x, y))
    ref, _ = top_eigenpairs(op, k=k, tol=1e-8, max_iter=300, seed=123, reorthogonalize="full")
    orig_full = lzmod._Lanczos._full
    rows: list[dict] = []
    for mode in ["partial", "full"]:
        for tol in tols:
            for seed in range(seeds):
                passes = {"n": 0}

                def counting_full(self, w, passes=passes):
                    passes["n"] += 1
                    return orig_full(self, w)

                lzmod._Lanczos._full = counting_full  # type: ignore[method-assign]
                top = _TimedOperator(HessianOperator(model, crit, (x, y)))
                top.matvec([torch.zeros_like(p) for p in top.params])  # builds the cached graph
                top.seconds = 0.0
                n0 = top.num_matvecs
                t0 = time.process_time()
                try:
                    vals, _ = top_eigenpairs(
                        top, k=k, tol=tol, max_iter=300, seed=seed, reorthogonalize=mode
                    )
                finally:
                    lzmod._Lanczos._full = orig_full  # type: ignore[method-assign]
                t = time.process_time() - t0
                hvps = top.num_matvecs - n0
                per_hvp = top.seconds / hvps
                overhead = (t - top.seconds) / hvps
                full_passes = 2 * hvps if mode == "full" else passes["n"]
                rows.append(
                    dict(
                        mode=mode,
                        tol=tol,
                        seed=seed,
                        hvps=hvps,
                        rel_err=float(((vals - ref).abs() / ref.abs()).max()),
                        seconds=t,
                        hvp_seconds=per_hvp,
                        overhead_per_step=overhead,
                        overhead_vs_hvp=overhead / per_hvp,
                        full_passes_per_step=full_passes / hvps,
                    )
                )
    return rows, float(ref[-1])


def print_topk(rows: list[dict], k: int) -> None:
    print(f"\n## top-{k} eigenvalues by Lanczos (max over seeds; per-step CPU costs averaged)")
    print(
        "| reorthogonalisation | tol | HVPs (mean / max) | max rel. error of top-"
        f"{k} | ms per HVP | non-HVP ms per step | non-HVP / HVP | full GS passes per step |"
    )
    print("|---|---|---|---|---|---|---|---|")
    keys = sorted({(r["mode"], r["tol"]) for r in rows}, key=lambda t: (t[0] != "partial", -t[1]))
    for mode, tol in keys:
        rs = [r for r in rows if r["mode"] == mode and r["tol"] == tol]
        nr = len(rs)
        print(
            f"| {mode} | {tol:g} | {sum(r['hvps'] for r in rs) / nr:.1f} / "
            f"{max(r['hvps'] for r in rs)} | {max(r['rel_err'] for r in rs):.1e} | "
            f"{sum(r['hvp_seconds'] for r in rs) / nr * 1e3:.1f} | "
            f"{sum(r['overhead_per_step'] for r in rs) / nr * 1e3:.2f} | "
            f"{sum(r['overhead_vs_hvp'] for r in rs) / nr:.3f} | "
            f"{sum(r['full_passes_per_step'] for r in rs) / nr:.2f} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=512, help="examples in the Hessian batch")
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--target", type=float, default=1e-3, help="relative accuracy of lambda_max")
    ap.add_argument("--trace-tol", type=float, default=0.02, help="relative stderr of the trace")
    ap.add_argument("--trace-max", type=int, default=300)
    ap.add_argument("--sketch", type=int, default=10, help="Hutch++ sketch width")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats (median)")
    ap.add_argument("--oracle-seeds", type=int, default=10)
    ap.add_argument("--only-oracle", action="store_true", help="run only the multi-seed counts")
    ap.add_argument("--topk", type=int, default=5, help="k of the top-k Lanczos section")
    ap.add_argument("--topk-seeds", type=int, default=3)
    ap.add_argument("--only-topk", action="store_true", help="run only the top-k Lanczos section")
    ap.add_argument("--quick", action="store_true", help="small model, for a smoke test")
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args()
    if args.quick:
        args.hidden, args.batch, args.train_steps, args.trace_max, args.reps = 64, 200, 50, 60, 2

    global REPEATS
    REPEATS = args.repeats
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    x, y = make_data(max(4000, args.batch * 2), seed=0)
    model = make_model(args.hidden, seed=0)
    final_loss = train(model, x, y, args.train_steps)
    model.eval()
    xb, yb = x[: args.batch], y[: args.batch]
    nparams = sum(p.numel() for p in model.parameters())
    info = dict(
        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        loadavg=os.getloadavg(),
        params=nparams,
        batch=args.batch,
        train_loss=final_loss,
    )
    print(json.dumps(info))

    topk_tols = [1e-2, 1e-3, 1e-4]
    if args.only_topk:
        rows, lam_k = topk_runs(model, xb, yb, args.topk, topk_tols, args.topk_seeds)
        print(f"reference lambda_{args.topk} = {lam_k:.6g}")
        print_topk(rows, args.topk)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(dict(info=info, topk=rows), f, indent=1)
        return
    if args.only_oracle:
        op = HessianOperator(model, nn.functional.cross_entropy, (xb, yb))
        ref = float(top_eigenpairs(op, k=1, tol=1e-8, max_iter=300, seed=123)[0][0])
        targets = [args.target, args.target / 10]
        counts = oracle_counts(model, xb, yb, ref, targets, args.oracle_seeds, steps=15)
        print(f"\n## products to the top eigenvalue, oracle stopping, {args.oracle_seeds} seeds")
        print("| algorithm | " + " | ".join(f"HVPs to {t:g}" for t in targets) + " |")
        print("|---|" + "---|" * len(targets))
        for k, v in counts.items():
            print(f"| {k} | " + " | ".join(f"{c:.1f}" for c in v) + " |")
        return
    hvp = per_hvp_seconds(model, xb, yb, args.reps)
    print("\n## seconds per Hessian-vector product")
    for k, v in hvp.items():
        print(f"| {k} | {v * 1e3:.1f} ms |")

    op = HessianOperator(model, nn.functional.cross_entropy, (xb, yb))
    (vals, _), t = timed(lambda: top_eigenpairs(op, k=2, tol=1e-8, max_iter=300, seed=123))
    ref = float(vals[0])
    print(
        f"\nreference lambda_max = {ref:.8g} (lambda_2 = {float(vals[1]):.6g}; "
        f"{op.num_matvecs} HVPs, {t:.1f} s)"
    )

    eig = top_eigenvalue_runs(model, xb, yb, ref, args.target)
    print(f"\n## top eigenvalue, target relative error {args.target:g}")
    print("| library | setting | lambda | rel. error | HVPs | seconds | reached |")
    print("|---|---|---|---|---|---|---|")
    for r in eig:
        print(
            f"| {r['library']} | {r['setting']}{' (default)' if r['default'] else ''} | "
            f"{r['value']:.6g} | {r['rel_err']:.1e} | {r['hvps']} | {r['seconds']:.2f} | "
            f"{'yes' if r['reached'] else 'no'} |"
        )
    for target in (args.target, args.target / 10):
        best: dict[str, dict] = {}
        for r in eig:
            if r["rel_err"] <= target and (
                r["library"] not in best or r["hvps"] < best[r["library"]]["hvps"]
            ):
                best[r["library"]] = r
        print(f"\n### cheapest setting reaching relative error {target:g}")
        print("| library | setting | HVPs | seconds |")
        print("|---|---|---|---|")
        for lib, r in best.items():
            print(f"| {lib} | {r['setting']} | {r['hvps']} | {r['seconds']:.2f} |")

    tr = trace_runs(model, xb, yb, args.trace_tol, args.trace_max, args.sketch)
    print(f"\n## trace (gradkit: 95% interval within {args.trace_tol:g}; others: stderr)")
    print(
        "| library | setting | trace | stderr | 95% half-width | HVPs | seconds | "
        "HVPs for stderr target | s for stderr target |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in tr:
        hw = r.get("half_width")
        print(
            f"| {r['library']} | {r['setting']} | {r['value']:.5g} | {r['stderr']:.3g} | "
            f"{'-' if hw is None else f'{hw:.3g}'} | "
            f"{r['hvps']} | {r['seconds']:.1f} | {r['hvps_for_target']:.0f} | "
            f"{r['seconds_for_target']:.1f} |"
        )
    rows, lam_k = topk_runs(model, xb, yb, args.topk, topk_tols, args.topk_seeds)
    print(f"\nreference lambda_{args.topk} = {lam_k:.6g}")
    print_topk(rows, args.topk)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                dict(info=info, hvp_seconds=hvp, reference=ref, eig=eig, trace=tr, topk=rows),
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
