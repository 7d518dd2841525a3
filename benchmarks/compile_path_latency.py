"""First-step latency of ``fused="compile"`` (per-tensor lists under torch.compile) for AdamP.

AdamP's projection needs per-tensor reductions, so it cannot use the flat path; with
``fused="compile"`` its chain runs compiled over the group's 150 tensors (the GPT-like set of
``first_step_latency.py``, 1.0M fp32 parameters). Prints the wall time of the first four steps
(step 1 runs eagerly and allocates the state, step 2 compiles), the dynamo graph count, the
median ms/step after that, and the eager path's median for comparison. Run it with an empty
inductor cache for a cold figure:

    TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python benchmarks/compile_path_latency.py
"""

import os
import sys
import time

import torch
from torch._dynamo.utils import counters

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from first_step_latency import shapes  # noqa: E402

import gradkit  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02) for s in shapes()]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    print(len(ps), "tensors", sum(p.numel() for p in ps), "params", flush=True)
    opt = gradkit.create_optimizer(ps, "adamp", fused="compile")
    for i in range(4):
        t0 = time.perf_counter()
        opt.step()
        graphs = counters["stats"]["unique_graphs"]
        print(f"step {i + 1}: {time.perf_counter() - t0:.2f} s, graphs {graphs}", flush=True)
    print(f"median ms/step {_median_ms(opt.step, 21):.1f}", flush=True)
    copies = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    for q, p in zip(copies, ps):
        q.grad = p.grad
    eager = gradkit.create_optimizer(copies, "adamp", fused=False)
    for _ in range(3):
        eager.step()
    print(f"eager median ms/step {_median_ms(eager.step, 11):.1f}", flush=True)


def _median_ms(step, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return sorted(times)[n // 2] * 1e3


if __name__ == "__main__":
    main()
