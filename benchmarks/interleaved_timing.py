"""Shared by the CPU step-time benchmarks: timing rows in interleaved rounds.

Every row steps its own copy of a parameter set. A round times every row in turn (``steps``
steps each, the median kept), so that a change in a shared machine's load hits all rows alike;
per round each row's time is divided by the fastest library row's of that round, and a row's
ratio is the median of those per-round ratios. Minor page faults per timed step are counted too
(on a CPU, temporaries that the allocator had handed back to the kernel cost more than their
arithmetic).
"""

from __future__ import annotations

import json
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def time_interleaved(
    steppers: dict[str, Callable[[], None]], device: torch.device, rounds: int, steps: int
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Per row: the median ms of each round, and minor page faults per timed step."""
    times: dict[str, list[float]] = {label: [] for label in steppers}
    faults: dict[str, int] = {label: 0 for label in steppers}
    for _ in range(rounds):
        for label, step in steppers.items():
            one = []
            faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(steps):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                one.append(time.perf_counter() - t0)
            times[label].append(statistics.median(one) * 1e3)
            faults[label] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
    return times, {label: n / (rounds * steps) for label, n in faults.items()}


def summarize(
    name: str,
    times: dict[str, list[float]],
    faults: dict[str, float],
    libraries: list[str],
) -> list[dict[str, Any]]:
    """One row per label: median ms, page faults per step and, when library rows were timed,
    the median over rounds of the ratio to the fastest library of that round."""
    rounds = len(next(iter(times.values()))) if times else 0
    best = [min(times[lb][r] for lb in libraries) for r in range(rounds)] if libraries else None
    out = []
    for label, ms in times.items():
        row: dict[str, Any] = {"optimizer": name, "row": label, "ms": statistics.median(ms)}
        row["page_faults_per_step"] = faults[label]
        if best:
            row["vs_fastest_library"] = statistics.median(t / b for t, b in zip(ms, best))
        out.append(row)
    return out


def write_json(path: str, header: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """The run's header and rows, as one JSON document."""
    with open(path, "w") as fh:
        json.dump({"header": header, "rows": rows}, fh, indent=1)


def emitter(jsonl: str | None) -> Callable[[dict[str, Any]], None]:
    """Print a row as JSON and, with ``jsonl``, append it to that file at once (a killed run
    keeps every finished row)."""

    def emit(row: dict[str, Any]) -> None:
        print(json.dumps(row), flush=True)
        if jsonl:
            with open(jsonl, "a") as fh:
                fh.write(json.dumps(row) + "\n")

    return emit
