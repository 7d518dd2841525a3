"""Optimizer trajectories on the 2-D test functions.

Each optimizer runs from the function's start point at a constant learning rate; the learning
rate is chosen from a log grid over ``[low, high] * default_lr`` (the same relative grid for every
optimizer; secondary ``*_lr`` scaled along) as the one with the lowest final function value.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from gradkit.bench.protocol.grid import log_grid
from gradkit.bench.protocol.optimizers import (
    OptimizerSpec,
    build_optimizer,
    default_lr,
    scaled_hyperparams,
)
from gradkit.bench.tasks.testfunctions import TestFunction

__all__ = ["Trajectory", "best_trajectory", "run_trajectory"]


@dataclass
class Trajectory:
    """The path of one optimizer on one function at one learning rate."""

    function: str
    optimizer: str
    lr: float
    path: list[list[float]]
    final_value: float

    def to_dict(self) -> dict:
        d = asdict(self)
        if not math.isfinite(d["final_value"]):
            d["final_value"] = None
        return d


class _Point(nn.Module):
    def __init__(self, start: tuple[float, float]) -> None:
        super().__init__()
        self.xy = nn.Parameter(torch.tensor(start, dtype=torch.float64))


def run_trajectory(fn: TestFunction, spec: OptimizerSpec, lr: float, steps: int) -> Trajectory:
    """Optimise ``fn`` from its start for ``steps`` steps (fp64, CPU)."""
    point = _Point(fn.start)
    opt = build_optimizer(point, spec, **scaled_hyperparams(spec, lr))
    path = [list(fn.start)]
    value = math.nan
    for _ in range(steps):

        def closure() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            loss = fn.fn(point.xy)
            loss.backward()
            return loss

        if spec.needs_closure:
            opt.step(closure)
        else:
            closure()
            opt.step()
        xy = point.xy.detach()
        if not bool(torch.isfinite(xy).all()) or float(xy.abs().max()) > 1e6:
            break
        path.append([float(xy[0]), float(xy[1])])
    with torch.no_grad():
        value = float(fn.fn(point.xy.detach()))
    return Trajectory(fn.name, spec.name, lr, path, value if math.isfinite(value) else math.inf)


def best_trajectory(
    fn: TestFunction,
    spec: OptimizerSpec,
    *,
    steps: int = 200,
    n_lrs: int = 8,
    lr_factors: tuple[float, float] = (0.1, 3000.0),
) -> Trajectory:
    """The trajectory with the lowest final value over a log grid of learning rates."""
    base = default_lr(spec)
    best: Trajectory | None = None
    for lr in log_grid(base * lr_factors[0], base * lr_factors[1], n_lrs):
        traj = run_trajectory(fn, spec, lr, steps)
        if best is None or traj.final_value < best.final_value:
            best = traj
    assert best is not None
    return best
