"""The cosine decay factor shared by Stable-SPAM's transforms."""

from __future__ import annotations

import math

__all__ = ["cosine_decay_factor"]


def cosine_decay_factor(step: int, t_max: int | None, eta_min: float) -> float:
    """``eta_min + (1 - eta_min) (1 + cos(pi t / (t_max + 1))) / 2`` for ``t < t_max``, then
    ``eta_min``; 1.0 when ``t_max`` is None (no decay)."""
    if t_max is None:
        return 1.0
    if step >= t_max:
        return eta_min
    return eta_min + (1.0 - eta_min) * (1.0 + math.cos(math.pi * step / (t_max + 1))) / 2.0
