"""Classic 2-D test functions for optimizer trajectories (drawn over their contours)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["TEST_FUNCTIONS", "TestFunction"]


@dataclass(frozen=True)
class TestFunction:
    """A function of a point ``(x, y)``, its start, drawing window and minimum."""

    name: str
    description: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    start: tuple[float, float]
    minimum: tuple[float, float]
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    log_contours: bool = True


def rosenbrock(p: torch.Tensor) -> torch.Tensor:
    """``(1 - x)^2 + 100 (y - x^2)^2``; minimum 0 at (1, 1), a curved narrow valley."""
    x, y = p[..., 0], p[..., 1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def rastrigin(p: torch.Tensor) -> torch.Tensor:
    """``20 + sum(x_i^2 - 10 cos(2 pi x_i))``; minimum 0 at the origin, many local minima."""
    return 20 + (p**2 - 10 * torch.cos(2 * math.pi * p)).sum(-1)


_C, _S = math.cos(math.pi / 6), math.sin(math.pi / 6)


def quadratic(p: torch.Tensor) -> torch.Tensor:
    """``0.5 (u^2 + 100 v^2)`` in axes rotated by 30 degrees: condition number 100, not aligned
    with the coordinates (which matters for diagonal and sign-based methods)."""
    x, y = p[..., 0], p[..., 1]
    u = _C * x + _S * y
    v = -_S * x + _C * y
    return 0.5 * (u**2 + 100 * v**2)


TEST_FUNCTIONS: dict[str, TestFunction] = {
    "rosenbrock": TestFunction(
        "rosenbrock",
        "Rosenbrock valley",
        rosenbrock,
        (-1.5, 2.5),
        (1.0, 1.0),
        (-2.0, 2.0),
        (-1.0, 3.0),
    ),
    "rastrigin": TestFunction(
        "rastrigin",
        "Rastrigin (many local minima)",
        rastrigin,
        (-2.3, 2.6),
        (0.0, 0.0),
        (-4.5, 4.5),
        (-4.5, 4.5),
        log_contours=False,
    ),
    "quadratic": TestFunction(
        "quadratic",
        "ill-conditioned quadratic (kappa = 100, rotated)",
        quadratic,
        (-4.0, 3.0),
        (0.0, 0.0),
        (-5.0, 5.0),
        (-5.0, 5.0),
    ),
}
