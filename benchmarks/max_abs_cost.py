"""Cost of the largest magnitude of a tensor on this machine: the infinity norm against
``aminmax`` and the Euclidean norm (why ``gradkit.core.max_abs`` avoids the infinity norm on
CPUs).

    python benchmarks/max_abs_cost.py [--numel 2000000] [--threads 1]

Prints the median milliseconds of each form over 30 calls on a float32 tensor.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch


def _ms(fn: Callable[[], object], n: int = 30) -> float:
    fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numel", type=int, default=2_000_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.randn(args.numel, device=args.device)
    inf = float("inf")
    rows = {
        "_foreach_norm(inf)": lambda: torch._foreach_norm([x], inf),
        "vector_norm(inf)": lambda: torch.linalg.vector_norm(x, inf),
        "abs().max()": lambda: x.abs().max(),
        "aminmax (gradkit max_abs on CPU)": lambda: torch.aminmax(x),
        "vector_norm(2) (reference pass)": lambda: torch.linalg.vector_norm(x),
    }
    print(
        f"{args.device}, {args.threads} thread(s), {args.numel} float32 elements, "
        f"torch {torch.__version__}"
    )
    for label, fn in rows.items():
        print(f"{label:36s} {_ms(fn):8.3f} ms")


if __name__ == "__main__":
    main()
