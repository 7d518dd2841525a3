"""Aggregators: transforms that combine ``k`` gradients (one per task) into one.

An aggregator is called on a *Jacobian*: a list with one tensor per parameter, of shape
``[k, *param.shape]`` (row ``i`` is gradient ``i``), and returns the combined gradient, one tensor
per parameter of shape ``param.shape``. All rows of all parameters together form the ``k x n``
matrix ``J``; every method here is *Gramian-weighted* or linear: it computes weights
``w in R^k`` (from the ``k x k`` Gramian ``G = J J^T``, summed over parameters, never
materialising the flat ``k x n`` matrix) and returns ``w^T J``, except Bloop, which projects
against a running average.

The weights are computed in float64 on the CPU (``k`` is small; this is what torchjd does too);
the combination ``w^T J`` runs on the Jacobian's device and dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from gradkit.errors import invalid_value
from gradkit.multigrad._qp import project_weights

__all__ = [
    "MGDA",
    "PCGrad",
    "UPGrad",
    "Aggregator",
    "Bloop",
    "GradNorm",
    "GramianAggregator",
    "Mean",
    "Sum",
    "gramian",
]


def _rows(jac: Tensor) -> Tensor:
    flat = jac.reshape(jac.shape[0], -1)
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    return flat


def gramian(jacobian: Sequence[Tensor]) -> Tensor:
    """``G = J J^T`` (float64, CPU, ``[k, k]``) of a per-parameter Jacobian ``[k, *shape]`` list."""
    if len(jacobian) == 0:
        raise ValueError("jacobian must hold at least one parameter's rows")
    total: Tensor | None = None
    for jac in jacobian:
        rows = _rows(jac)
        g = (rows @ rows.T).to(device="cpu", dtype=torch.float64)
        total = g if total is None else total + g
    assert total is not None
    return total


def _combine(weights: Tensor, jacobian: Sequence[Tensor]) -> list[Tensor]:
    out = []
    for jac in jacobian:
        w = weights.to(device=jac.device, dtype=jac.dtype)
        out.append(torch.tensordot(w, jac, dims=1))
    return out


def _num_rows(jacobian: Sequence[Tensor]) -> int:
    if len(jacobian) == 0:
        raise ValueError("jacobian must hold at least one parameter's rows")
    k = jacobian[0].shape[0]
    for jac in jacobian:
        if jac.dim() == 0 or jac.shape[0] != k:
            raise ValueError(
                "every tensor of jacobian must have the same number k of rows (dimension 0)"
            )
    if k == 0:
        raise ValueError("jacobian must hold at least one gradient (k >= 1)")
    return k


class Aggregator:
    """Base class: ``aggregator(jacobian, losses=None, params=None) -> combined gradient``.

    ``losses`` (a ``[k]`` tensor of the task losses' values) and ``params`` (the parameters the
    Jacobian's tensors belong to, in the same order) are given by :func:`gradkit.multigrad.backward`;
    only methods that need them (GradNorm) read them. Stateful aggregators (Bloop, GradNorm, PCGrad
    with its own generator) save and restore their state with ``state_dict``/``load_state_dict``.
    """

    def __call__(
        self,
        jacobian: Sequence[Tensor],
        *,
        losses: Tensor | None = None,
        params: Sequence[Tensor] | None = None,
    ) -> list[Tensor]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state; got keys {sorted(state)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class GramianAggregator(Aggregator):
    """An aggregator whose weights ``w = weights(G)`` depend on the Gramian only; returns ``w^T J``.

    ``self.last_weights`` holds the weights of the latest call (float64, CPU).
    """

    last_weights: Tensor | None = None

    def weights(self, gram: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(
        self,
        jacobian: Sequence[Tensor],
        *,
        losses: Tensor | None = None,
        params: Sequence[Tensor] | None = None,
    ) -> list[Tensor]:
        _num_rows(jacobian)
        w = self.weights(gramian(jacobian))
        self.last_weights = w
        return _combine(w, jacobian)


class Sum(GramianAggregator):
    """``sum_i g_i``: the gradient of the summed losses (the plain multi-task baseline)."""

    def weights(self, gram: Tensor) -> Tensor:
        return torch.ones(gram.shape[0], dtype=torch.float64)

    def __call__(self, jacobian, *, losses=None, params=None):  # type: ignore[no-untyped-def]
        k = _num_rows(jacobian)
        self.last_weights = torch.ones(k, dtype=torch.float64)
        return [jac.sum(dim=0) for jac in jacobian]


class Mean(GramianAggregator):
    """``(1/k) sum_i g_i``."""

    def weights(self, gram: Tensor) -> Tensor:
        k = gram.shape[0]
        return torch.full((k,), 1.0 / k, dtype=torch.float64)


class PCGrad(GramianAggregator):
    """PCGrad: project each task gradient onto the normal plane of every conflicting one, then sum.

    For each task ``i``: ``g_i^PC = g_i``; for ``j != i`` in a random order, if
    ``<g_i^PC, g_j> < 0`` then ``g_i^PC -= <g_i^PC, g_j> / ||g_j||^2 g_j``. The update is
    ``sum_i g_i^PC`` (Algorithm 1 of the paper). Computed on the Gramian: ``g_i^PC = c_i^T J``
    with ``<g_i^PC, g_j> = (G c_i)_j``, so no gradient copy is made per projection.

    Random order: for ``i = 0, ..., k-1`` one ``torch.randperm(k)`` is drawn (``j == i``
    skipped), from ``generator`` if given, else from a generator seeded with ``seed`` if given,
    else from torch's global RNG. This is the draw sequence of torchjd's ``PCGrad``, so the same
    seed gives the same orders. ``orders`` (a ``k x k`` integer tensor: row ``i`` is the order for
    task ``i``) fixes the orders instead.

    Claim (paper, two tasks): with ``k = 2`` the update has a non-negative inner product with
    both task gradients. For ``k > 2`` this is not guaranteed.

    Paper: "Gradient Surgery for Multi-Task Learning", Tianhe Yu, Saurabh Kumar, Abhishek Gupta,
    Sergey Levine, Karol Hausman, Chelsea Finn, 2020, arXiv 2001.06782.

    >>> import torch
    >>> g = [torch.tensor([[1.0, 0.0], [-1.0, 1.0]])]  # two conflicting gradients of one parameter
    >>> PCGrad(seed=0)(g)[0]
    tensor([0.5000, 1.5000])
    """

    def __init__(
        self,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        orders: Tensor | None = None,
    ) -> None:
        if seed is not None and generator is not None:
            raise ValueError("give PCGrad a seed or a generator, not both")
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        self.generator = generator
        self.orders = None if orders is None else torch.as_tensor(orders, dtype=torch.long)

    def _order(self, i: int, k: int) -> Tensor:
        if self.orders is not None:
            if self.orders.shape != (k, k):
                raise ValueError(
                    f"orders must have shape ({k}, {k}), got {tuple(self.orders.shape)}"
                )
            order = self.orders[i]
            if sorted(order.tolist()) != list(range(k)):
                raise ValueError(f"orders[{i}] must be a permutation of 0..{k - 1}")
            return order
        return torch.randperm(k, generator=self.generator)

    def weights(self, gram: Tensor) -> Tensor:
        k = gram.shape[0]
        total = torch.zeros(k, dtype=gram.dtype)
        for i in range(k):
            order = self._order(i, k)
            c = torch.zeros(k, dtype=gram.dtype)
            c[i] = 1.0
            for j in order.tolist():
                if j == i:
                    continue
                inner = gram[j] @ c
                if inner < 0.0:
                    c[j] -= inner / gram[j, j]
            total = total + c
        return total

    def state_dict(self) -> dict[str, Any]:
        return {} if self.generator is None else {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            if self.generator is None:
                self.generator = torch.Generator()
            self.generator.set_state(state["generator"])

    def __repr__(self) -> str:
        return f"PCGrad(generator={'own' if self.generator is not None else 'global'})"


class MGDA(GramianAggregator):
    """MGDA: the minimum-norm point of the convex hull of the task gradients.

    ``w = argmin_{w in simplex} w^T G w``, found by the Frank-Wolfe solver of Algorithm 2 of Sener
    and Koltun: start at ``w = 1/k``; repeat ``t = argmin (G w)``; exact line search
    ``gamma = argmin_{[0,1]} ||(1-gamma) w^T J + gamma g_t||^2`` (``gamma = 1`` if
    ``G_tt <= w^T G e_t``, ``0`` if ``w^T G w <= w^T G e_t``, else
    ``(w^T G w - w^T G e_t) / (w^T G w + G_tt - 2 w^T G e_t)``); ``w = (1-gamma) w + gamma e_t``;
    stop when ``gamma < epsilon`` or after ``max_iters``. Defaults as torchjd's ``MGDA``.

    Claim (Désidéri): the exact minimiser ``d = w^T J`` satisfies ``<d, g_i> >= ||d||^2`` for every
    ``i`` (a common descent direction unless ``d = 0``). Frank-Wolfe stops early, so this holds
    up to the solver's tolerance; for ``k = 2`` the first step is exact.

    Papers: "Multiple-gradient descent algorithm (MGDA) for multiobjective optimization",
    Jean-Antoine Désidéri, 2012, Comptes Rendus Mathematique (no arXiv id); "Multi-Task Learning
    as Multi-Objective Optimization", Ozan Sener, Vladlen Koltun, 2018, arXiv 1810.04650.
    """

    def __init__(self, *, epsilon: float = 0.001, max_iters: int = 100) -> None:
        if not epsilon > 0:
            raise invalid_value("epsilon", epsilon, "> 0")
        if int(max_iters) != max_iters or max_iters < 1:
            raise invalid_value("max_iters", max_iters, "an integer >= 1")
        self.epsilon = float(epsilon)
        self.max_iters = int(max_iters)

    def weights(self, gram: Tensor) -> Tensor:
        k = gram.shape[0]
        w = torch.full((k,), 1.0 / k, dtype=gram.dtype)
        for _ in range(self.max_iters):
            t = int(torch.argmin(gram @ w))
            wge = w @ gram[:, t]
            wgw = w @ (gram @ w)
            gtt = gram[t, t]
            if gtt <= wge:
                gamma = torch.ones((), dtype=gram.dtype)
            elif wgw <= wge:
                gamma = torch.zeros((), dtype=gram.dtype)
            else:
                gamma = (wgw - wge) / (wgw + gtt - 2 * wge)
            e_t = torch.zeros(k, dtype=gram.dtype)
            e_t[t] = 1.0
            w = (1 - gamma) * w + gamma * e_t
            if gamma < self.epsilon:
                break
        return w

    def __repr__(self) -> str:
        return f"MGDA(epsilon={self.epsilon}, max_iters={self.max_iters})"


class UPGrad(GramianAggregator):
    """UPGrad: project each task gradient onto the dual cone of all of them, then combine.

    The dual cone is ``{x : J x >= 0}``. Each ``pref_i g_i`` (``pref = 1/k`` by default) is
    projected onto it; the projections are summed. In weights: ``v_i = argmin v^T G v`` subject
    to ``v >= pref_i e_i``, ``w = sum_i v_i``, update ``w^T J``. As in torchjd, the QP is solved
    on ``G' = G / tr(G) + reg_eps I`` (``G' = reg_eps I`` when ``tr(G) < norm_eps``): the trace
    normalisation does not change the solution; ``reg_eps`` makes ``G'`` positive definite and
    moves the solution slightly. The QP is solved exactly by an active-set method
    (:mod:`gradkit.multigrad._qp`), where torchjd calls quadprog.

    Claim (paper): the update is non-conflicting, ``J w^T J = G w >= 0``: its inner product with
    every task gradient is non-negative. Exact for ``reg_eps = 0``; with ``reg_eps > 0``,
    ``(G w)_i >= -reg_eps tr(G) w_i``.

    Paper: "Jacobian Descent for Multi-Objective Optimization", Pierre Quinton, Valérian Rey,
    2024, arXiv 2406.16232.
    """

    def __init__(
        self,
        *,
        pref_vector: Tensor | Sequence[float] | None = None,
        norm_eps: float = 0.0001,
        reg_eps: float = 0.0001,
    ) -> None:
        if not norm_eps >= 0:
            raise invalid_value("norm_eps", norm_eps, ">= 0")
        if not reg_eps >= 0:
            raise invalid_value("reg_eps", reg_eps, ">= 0")
        self.pref_vector = (
            None
            if pref_vector is None
            else torch.as_tensor(pref_vector, dtype=torch.float64).reshape(-1)
        )
        self.norm_eps = float(norm_eps)
        self.reg_eps = float(reg_eps)

    def weights(self, gram: Tensor) -> Tensor:
        k = gram.shape[0]
        if self.pref_vector is None:
            pref = torch.full((k,), 1.0 / k, dtype=torch.float64)
        else:
            if self.pref_vector.shape[0] != k:
                raise ValueError(f"pref_vector has {self.pref_vector.shape[0]} entries, need k={k}")
            pref = self.pref_vector
        trace = gram.diagonal().sum()
        g = torch.zeros_like(gram) if trace < self.norm_eps else gram / trace
        g = g + self.reg_eps * torch.eye(k, dtype=gram.dtype)
        w = torch.zeros(k, dtype=torch.float64)
        for i in range(k):
            u = torch.zeros(k, dtype=torch.float64)
            u[i] = pref[i]
            w = w + project_weights(u, g)
        return w

    def __repr__(self) -> str:
        return f"UPGrad(norm_eps={self.norm_eps}, reg_eps={self.reg_eps})"


class Bloop(Aggregator):
    """Bloop: the training gradient plus the auxiliary gradients projected orthogonally to an EMA of
    the training gradient.

    Row ``train_index`` of the Jacobian is the training loss's gradient ``g``; the other rows are
    auxiliary gradients, summed into ``a``. With ``m`` an exponential moving average of ``g``::

        m <- beta m + (1 - beta) g          (m = g at the first call)
        d  = g + lam (a - <a, m> / ||m||^2 m)

    (inner products over all parameters together; no projection while ``m = 0``). With ``beta = 0``
    the auxiliary part is exactly orthogonal to the training gradient, so
    ``<d, g> = ||g||^2``: to first order the auxiliary loss does not change the training loss.

    Reconstructed from the paper's abstract ("a parameter update direction that combines the
    training loss gradient and the orthogonal projection of the auxiliary gradient to the
    training gradient ... using a moving average of the training loss gradients"): the EMA's
    initialisation (first gradient), the update order (EMA before projection), summing several
    auxiliary gradients before projecting, and the defaults ``beta = 0.99``, ``lam = 1`` are choices
    made here, not checked against the paper's full text.

    Paper: "Careful with that Scalpel: Improving Gradient Surgery with an EMA", Yu-Guan Hsieh,
    James Thornton, Eugene Ndiaye, Michal Klein, Marco Cuturi, Pierre Ablin, 2024,
    arXiv 2402.02998.
    """

    def __init__(self, *, beta: float = 0.99, lam: float = 1.0, train_index: int = 0) -> None:
        if not 0.0 <= beta < 1.0:
            raise invalid_value("beta", beta, "in [0, 1)")
        if not lam >= 0:
            raise invalid_value("lam", lam, ">= 0")
        if int(train_index) != train_index or train_index < 0:
            raise invalid_value("train_index", train_index, "an integer >= 0")
        self.beta = float(beta)
        self.lam = float(lam)
        self.train_index = int(train_index)
        self.ema: list[Tensor] | None = None

    def __call__(
        self,
        jacobian: Sequence[Tensor],
        *,
        losses: Tensor | None = None,
        params: Sequence[Tensor] | None = None,
    ) -> list[Tensor]:
        k = _num_rows(jacobian)
        t = self.train_index
        if t >= k:
            raise invalid_value("train_index", t, f"< k = {k}")
        train = [jac[t] for jac in jacobian]
        if self.ema is None:
            self.ema = [g.detach().clone() for g in train]
        else:
            if len(self.ema) != len(train) or any(
                m.shape != g.shape for m, g in zip(self.ema, train)
            ):
                raise ValueError("Bloop's EMA does not match the Jacobian's parameters")
            for m, g in zip(self.ema, train):
                m.mul_(self.beta).add_(g, alpha=1.0 - self.beta)
        aux = [jac.sum(dim=0) - jac[t] for jac in jacobian]
        mm = sum(float((m.double() * m.double()).sum()) for m in self.ema)
        am = sum(float((a.double() * m.double()).sum()) for a, m in zip(aux, self.ema))
        coef = am / mm if mm > 0 else 0.0
        return [g + self.lam * (a - coef * m) for g, a, m in zip(train, aux, self.ema)]

    def state_dict(self) -> dict[str, Any]:
        return {} if self.ema is None else {"ema": [m.clone() for m in self.ema]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema = None if "ema" not in state else [m.clone() for m in state["ema"]]

    def __repr__(self) -> str:
        return f"Bloop(beta={self.beta}, lam={self.lam}, train_index={self.train_index})"


class GradNorm(Aggregator):
    """GradNorm: loss weights ``w_i`` learnt so that the weighted tasks' gradient norms on a shared
    layer ``W`` follow their relative training rates.

    Each call, with task losses ``L_i`` (``L_i(0)`` = the first call's) and gradients ``g_i``::

        G_i   = w_i ||g_i restricted to W||          (norm over all tensors of ``layer``)
        Gbar  = mean_i G_i
        r_i   = (L_i / L_i(0)) / mean_j (L_j / L_j(0))
        L_grad = sum_i | G_i - Gbar r_i^alpha |     (Gbar r_i^alpha held constant)
        update = sum_i w_i g_i                      (with the weights before this step's change)
        w_i  <- w_i - weight_lr * sign(G_i - Gbar r_i^alpha) ||g_i restricted to W||
        w    <- w * k / sum_j w_j                   (renormalise: the weights sum to k)

    The weights start at 1. The paper updates ``w`` with "a gradient step"; plain gradient descent
    with ``weight_lr`` is the choice made here (the default 0.025 is ours, not the paper's).
    ``layer`` are the parameters of the last shared layer (the paper's ``W``); they must be among
    the parameters given to :func:`gradkit.multigrad.backward`.

    Paper: "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep Multitask
    Networks", Zhao Chen, Vijay Badrinarayanan, Chen-Yu Lee, Andrew Rabinovich, 2018,
    arXiv 1711.02257.
    """

    def __init__(
        self, layer: Sequence[Tensor], *, alpha: float = 1.5, weight_lr: float = 0.025
    ) -> None:
        self.layer = list(layer)
        if not self.layer:
            raise ValueError("GradNorm needs the parameters of a shared layer (layer is empty)")
        if not alpha >= 0:
            raise invalid_value("alpha", alpha, ">= 0")
        if not weight_lr > 0:
            raise invalid_value("weight_lr", weight_lr, "> 0")
        self.alpha = float(alpha)
        self.weight_lr = float(weight_lr)
        self.loss_weights: Tensor | None = None
        self.initial_losses: Tensor | None = None

    def __call__(
        self,
        jacobian: Sequence[Tensor],
        *,
        losses: Tensor | None = None,
        params: Sequence[Tensor] | None = None,
    ) -> list[Tensor]:
        k = _num_rows(jacobian)
        if losses is None or params is None:
            raise ValueError(
                "GradNorm needs losses and params (gradkit.multigrad.backward gives both)"
            )
        losses = losses.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
        if losses.shape[0] != k:
            raise ValueError(f"GradNorm got {losses.shape[0]} losses for k={k} gradients")
        position = {id(p): n for n, p in enumerate(params)}
        missing = [i for i, p in enumerate(self.layer) if id(p) not in position]
        if missing:
            raise ValueError("GradNorm's layer parameters must be among the differentiated params")
        sq = torch.zeros(k, dtype=torch.float64)
        for p in self.layer:
            rows = _rows(jacobian[position[id(p)]])
            sq += (rows.double() ** 2).sum(dim=1).cpu()
        norms = sq.sqrt()
        if self.loss_weights is None:
            self.loss_weights = torch.ones(k, dtype=torch.float64)
        if self.initial_losses is None:
            self.initial_losses = losses.clone()
        w = self.loss_weights
        out = _combine(w, jacobian)
        g_i = w * norms
        g_bar = g_i.mean()
        ratio = losses / self.initial_losses
        r = ratio / ratio.mean()
        target = g_bar * r**self.alpha
        w = w - self.weight_lr * torch.sign(g_i - target) * norms
        self.loss_weights = w * k / w.sum()
        return out

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.loss_weights is not None:
            state["loss_weights"] = self.loss_weights.clone()
        if self.initial_losses is not None:
            state["initial_losses"] = self.initial_losses.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        lw, il = state.get("loss_weights"), state.get("initial_losses")
        self.loss_weights = None if lw is None else lw.clone()
        self.initial_losses = None if il is None else il.clone()

    def __repr__(self) -> str:
        return f"GradNorm(alpha={self.alpha}, weight_lr={self.weight_lr})"
