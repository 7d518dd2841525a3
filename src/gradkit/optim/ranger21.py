"""Ranger21: AdamW-style positive-negative momentum with eight add-ons from the literature."""

from __future__ import annotations

from gradkit.core.hyperparams import flag
from gradkit.core.transform import GradientTransformation, chain
from gradkit.optim._base import RecipeOptimizer
from gradkit.optim.registry import register_optimizer
from gradkit.transforms.agc import AdaptiveGradientClipping
from gradkit.transforms.centralization import GradientCentralization
from gradkit.transforms.lookahead import Lookahead
from gradkit.transforms.lr_schedule import LinearWarmupWarmdown, WithScheduledLR
from gradkit.transforms.norm_loss import NormLoss
from gradkit.transforms.pnm import ScaleByAdaPNM
from gradkit.transforms.scaling import ScaleByLearningRate
from gradkit.transforms.stable_weight_decay import StableWeightDecay
from gradkit.transforms.std_normalization import NormalizeByStd

__all__ = ["Ranger21"]


@register_optimizer(
    "ranger21",
    paper="Ranger21: a synergistic deep learning optimizer",
    arxiv="2106.13731",
)
class Ranger21(RecipeOptimizer):
    """Ranger21, at step ``t`` with the scheduled rate ``lr_t``:

    1. adaptive gradient clipping (unit-wise, ``agc_clipping_value``, ``agc_eps``);
    2. gradient centralization (``centralize_gradients``) and division by the gradient's std
       (``normalize_gradients``);
    3. AdaPNM: momenta ``m_t <- b1^2 m_t + (1-b1^2) g`` on alternate buffers,
       ``pn = ((1+b0) m_t - b0 m_{t-1}) / sqrt((1+b0)^2 + b0^2)``,
       ``v <- b2 v + (1-b2) g^2``, ``v_max <- max(v_max, v)``,
       ``d = softplus(sqrt(v_max / (1-b2^t)) + eps, beta_softplus)``;
    4. stable weight decay ``p <- (1 - lr_t wd / sqrt(mean(v / (1-b2^t)))) p``;
    5. norm loss ``W_i <- W_i (1 - lr_t 2 f (1 - 1/(||W_i|| + eps)))`` per output unit;
    6. ``p <- p - lr_t * pn / d / (1-b1^t)``;
    7. lookahead every ``lookahead_merge_time`` steps with ``lookahead_blending_alpha``;

    with ``lr_t`` the linear warmup / warmdown of
    :class:`~gradkit.transforms.lr_schedule.LinearWarmupWarmdown` (give ``num_iterations`` for
    the warmdown). Defaults from the paper and its reference code.

    Recipe: ``WithScheduledLR(chain(AdaptiveGradientClipping, GradientCentralization,
    NormalizeByStd, ScaleByAdaPNM, StableWeightDecay, NormLoss, ScaleByLearningRate,
    Lookahead), LinearWarmupWarmdown)``; centralization and std normalization are left out when
    switched off.
    """

    hyperparameters = {
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "beta0": 0.9,
        "eps": 1e-8,
        "weight_decay": 1e-4,
        "use_softplus": True,
        "beta_softplus": 50.0,
        "amsgrad": True,
        "agc_clipping_value": 1e-2,
        "agc_eps": 1e-3,
        "gc_conv_only": False,
        "norm_loss_factor": 1e-4,
        "lookahead_merge_time": 5,
        "lookahead_blending_alpha": 0.5,
        "num_iterations": None,
        "num_warm_up_iterations": None,
        "num_warm_down_iterations": None,
        "warm_down_min_lr": 3e-5,
        "disable_lr_scheduler": False,
    }

    options = (flag("centralize_gradients", True), flag("normalize_gradients", True))

    def recipe(
        self, *, centralize_gradients: bool, normalize_gradients: bool
    ) -> GradientTransformation:
        stages: list[GradientTransformation] = [AdaptiveGradientClipping()]
        if centralize_gradients:
            stages.append(GradientCentralization())
        if normalize_gradients:
            stages.append(NormalizeByStd())
        pnm = ScaleByAdaPNM()
        stages += [
            pnm,
            StableWeightDecay(pnm),
            NormLoss(),
            ScaleByLearningRate(),
            Lookahead(k_key="lookahead_merge_time", alpha_key="lookahead_blending_alpha"),
        ]
        return WithScheduledLR(chain(*stages), LinearWarmupWarmdown())
