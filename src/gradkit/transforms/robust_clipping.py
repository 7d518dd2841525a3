"""Median tracking by clipped increments: a robust (median) estimate of the gradient over steps."""

from __future__ import annotations

import torch

from gradkit.core.hyperparams import interval
from gradkit.core.transform import GradientTransformation, State, StepContext, TensorList
from gradkit.transforms.clipping import global_norm

__all__ = ["MedianTracking", "MEDIAN_NORMS"]

#: the norms whose median is tracked: the geometric median of the whole group, of each tensor,
#: or the coordinate-wise median
MEDIAN_NORMS = ("global", "tensor", "coordinate")


class MedianTracking(GradientTransformation):
    """Online median of the gradients by stochastic proximal point steps (clipped increments).

    One proximal step with step size ``tau`` on ``m -> ||m - g_t||`` from the current estimate
    ``m`` gives::

        m <- m + min(1, tau / ||g_t - m||) (g_t - m)

    and the output is the new ``m``. The estimate follows the median of the stream of
    gradients rather than its mean (heavy-ball momentum is the same step on ``||m - g||^2 / 2``
    and tracks the mean). With the norm ``norm``:

    - ``"global"``: the l2 norm of the whole param group (geometric median of the gradient);
    - ``"tensor"``: the l2 norm of each tensor (geometric median per tensor);
    - ``"coordinate"``: the absolute value of each entry (coordinate-wise median; the
      increment is clamped to ``[-tau, tau]``).

    Started from ``m = 0`` and reset every step it is plain clipping (by global norm, by tensor
    norm, by value) of ``g`` at ``tau``, the special case the paper points out. Hyperparameter
    ``median_tau`` (tau > 0). One buffer of state. ``flat_ok`` is False only for ``"tensor"``.

    Schaipp, Garrigos, Simsekli & Gower, "SGD with Clipping is Secretly Estimating the Median
    Gradient", arXiv 2402.12828.
    """

    hyperparameters = (interval("median_tau", 1.0, 0.0, low_open=True),)

    def __init__(self, norm: str = "global") -> None:
        if norm not in MEDIAN_NORMS:
            raise ValueError(f"Invalid norm: {norm!r}; norm must be one of {MEDIAN_NORMS!r}")
        self.norm = norm
        self.flat_ok = norm != "tensor"

    def init(self, params: TensorList) -> State:
        return {"median": [torch.zeros_like(p) for p in params]}

    def update(
        self, updates: TensorList, state: State, params: TensorList, ctx: StepContext
    ) -> TensorList:
        tau = ctx.group["median_tau"]
        m = state["median"]
        diff = torch._foreach_sub(updates, m)
        if self.norm == "coordinate":
            torch._foreach_clamp_min_(diff, -tau)
            torch._foreach_clamp_max_(diff, tau)
        elif self.norm == "tensor":
            norms = torch._foreach_norm(diff)
            torch._foreach_mul_(diff, [torch.clamp(tau / n, max=1.0) for n in norms])
        else:
            coef = torch.clamp(tau / global_norm(diff), max=1.0)
            torch._foreach_mul_(diff, coef.to(diff[0].device))
        torch._foreach_add_(m, diff)
        return m

    def __repr__(self) -> str:
        return f"MedianTracking(norm={self.norm!r})"
