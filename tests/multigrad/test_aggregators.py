"""Aggregators against torchjd (PCGrad, MGDA, UPGrad) and the papers' claims.

Tolerance for torchjd equality: 1e-12 relative to the largest entry. Both sides compute in
float64 from the same Gramian entries (up to summation order: gradkit sums per-parameter
Gramians), so the aggregated vectors agree to a few ulps (seen: <= 2e-14 for k = 8); UPGrad's QP
is solved exactly by both (quadprog's dual active set vs gradkit's primal one).
"""

from __future__ import annotations

import doctest

import pytest
import torch

import gradkit.multigrad._backward as backward_module
import gradkit.multigrad.aggregators as aggregators_module
from gradkit.multigrad import MGDA, PCGrad, UPGrad, gramian
from gradkit.multigrad._qp import project_weights

try:  # the reference; the behaviour tests below run without it
    import torchjd.aggregation as torchjd_aggregation
except ImportError:  # pragma: no cover - torchjd is in the test extra
    torchjd_aggregation = None

requires_torchjd = pytest.mark.skipif(
    torchjd_aggregation is None, reason="torchjd (the reference) is not installed"
)

SIZES = (2, 3, 5, 8)
SPLIT = (3, 4, 13)  # one flat gradient of 20 numbers as three parameters: [3], [2, 2], [13]


def _gradient_set(k: int, seed: int, conflict: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    j = torch.randn(k, sum(SPLIT), generator=gen, dtype=torch.float64)
    if conflict:  # push the other gradients against the first one
        j[1:] -= 1.5 * j[0]
    return j


def _split(j: torch.Tensor) -> list[torch.Tensor]:
    a, b, c = torch.split(j, SPLIT, dim=1)
    return [a, b.reshape(-1, 2, 2), c]


def _flat(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in parts])


def _close(mine: torch.Tensor, ref: torch.Tensor, rel: float = 1e-12) -> None:
    err = float((mine - ref).abs().max())
    scale = float(ref.abs().max())
    assert err <= rel * max(scale, 1e-300), (err, scale)


CASES = [(k, s, c) for k in SIZES for s in range(4) for c in (False, True)]


@requires_torchjd
@pytest.mark.parametrize(("k", "seed", "conflict"), CASES)
def test_pcgrad_matches_torchjd_with_the_same_seed(k: int, seed: int, conflict: bool) -> None:
    j = _gradient_set(k, seed, conflict)
    # torchjd draws torch.randperm(k) from the global RNG once per task, in task order; gradkit
    # draws the same sequence from its own generator seeded with the same number
    torch.manual_seed(1000 + seed)
    ref = torchjd_aggregation.PCGrad()(j)
    _close(_flat(PCGrad(seed=1000 + seed)(_split(j))), ref)


@requires_torchjd
def test_pcgrad_global_rng_and_explicit_orders_match_torchjd() -> None:
    j = _gradient_set(5, 7, True)
    torch.manual_seed(3)
    ref = torchjd_aggregation.PCGrad()(j)
    torch.manual_seed(3)
    _close(_flat(PCGrad()(_split(j))), ref)  # global RNG, same draws
    gen = torch.Generator().manual_seed(3)
    orders = torch.stack([torch.randperm(5, generator=gen) for _ in range(5)])
    _close(_flat(PCGrad(orders=orders)(_split(j))), ref)


@requires_torchjd
@pytest.mark.parametrize(("k", "seed", "conflict"), CASES)
def test_mgda_matches_torchjd(k: int, seed: int, conflict: bool) -> None:
    j = _gradient_set(k, seed, conflict)
    _close(_flat(MGDA()(_split(j))), torchjd_aggregation.MGDA()(j))
    ref = torchjd_aggregation.MGDA(epsilon=1e-6, max_iters=500)(j)
    _close(_flat(MGDA(epsilon=1e-6, max_iters=500)(_split(j))), ref)


@requires_torchjd
@pytest.mark.parametrize(("k", "seed", "conflict"), CASES)
def test_upgrad_matches_torchjd(k: int, seed: int, conflict: bool) -> None:
    pytest.importorskip("qpsolvers")
    pytest.importorskip("quadprog")
    j = _gradient_set(k, seed, conflict)
    _close(_flat(UPGrad()(_split(j))), torchjd_aggregation.UPGrad()(j))
    pref = torch.arange(1, k + 1, dtype=torch.float64)
    ref = torchjd_aggregation.UPGrad(pref_vector=pref)(j)
    _close(_flat(UPGrad(pref_vector=pref)(_split(j))), ref)


@requires_torchjd
def test_the_comparison_can_fail() -> None:
    j = _gradient_set(3, 0, True)
    torch.manual_seed(0)
    ref = torchjd_aggregation.PCGrad()(j)
    wrong_orders = torch.tensor([[0, 2, 1], [0, 1, 2], [0, 1, 2]])  # task 0's order reversed
    flips = [PCGrad(orders=o.expand(3, 3))(_split(j)) for o in wrong_orders]
    assert any(float((_flat(f) - ref).abs().max()) > 1e-6 for f in flips)
    with pytest.raises(AssertionError):
        _close(_flat(MGDA(max_iters=1)(_split(j))), torchjd_aggregation.MGDA()(j))


# --- the papers' claims -----------------------------------------------------------------------


def _inner_products(update: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    return j @ update


@pytest.mark.parametrize("seed", range(20))
def test_pcgrad_two_tasks_never_conflicts_with_either_task(seed: int) -> None:
    j = _gradient_set(2, seed, conflict=True)
    assert float(j[0] @ j[1]) < 0  # the tasks conflict
    d = _flat(PCGrad(seed=seed)(_split(j)))
    scale = float(j.norm(dim=1).max()) ** 2
    assert float(_inner_products(d, j).min()) >= -1e-12 * scale
    # both projected gradients are orthogonal to the other task's gradient
    g1 = j[0] - (j[0] @ j[1]) / (j[1] @ j[1]) * j[1]
    g2 = j[1] - (j[1] @ j[0]) / (j[0] @ j[0]) * j[0]
    _close(d, g1 + g2)


def test_pcgrad_more_than_two_tasks_can_conflict() -> None:
    """The non-conflict guarantee is stated for two tasks; with three it can fail."""
    found = 0
    for seed in range(200):
        gen = torch.Generator().manual_seed(seed)
        j = torch.randn(3, 5, generator=gen, dtype=torch.float64)
        d = _flat(PCGrad(seed=seed)([j]))
        found += int(float(_inner_products(d, j).min()) < -1e-9)
    assert found > 0


def test_pcgrad_without_conflict_is_the_sum() -> None:
    j = torch.tensor([[1.0, 0.2, 0.0], [0.5, 1.0, 0.1], [0.1, 0.1, 1.0]], dtype=torch.float64)
    assert float((j @ j.T).min()) > 0
    _close(PCGrad(seed=0)([j])[0], j.sum(0))


@pytest.mark.parametrize("seed", range(20))
def test_mgda_two_tasks_is_the_min_norm_point(seed: int) -> None:
    j = _gradient_set(2, seed, conflict=seed % 2 == 0)
    d = _flat(MGDA()(_split(j)))
    g1, g2 = j
    # Désidéri's two-gradient closed form: w1 = clip(<g2 - g1, g2> / ||g1 - g2||^2, 0, 1)
    w1 = float(((g2 - g1) @ g2) / ((g1 - g2) @ (g1 - g2)))
    w1 = min(max(w1, 0.0), 1.0)
    _close(d, w1 * g1 + (1 - w1) * g2)
    # every task decreases at least as fast as ||d||^2
    assert float(_inner_products(d, j).min()) >= float(d @ d) * (1 - 1e-12) - 1e-12


@pytest.mark.parametrize(("k", "seed"), [(k, s) for k in SIZES for s in range(5)])
def test_upgrad_is_non_conflicting(k: int, seed: int) -> None:
    j = _gradient_set(k, seed, conflict=True)
    d = _flat(UPGrad(reg_eps=0.0)(_split(j)))
    scale = float(j.norm(dim=1).max()) ** 2
    assert float(_inner_products(d, j).min()) >= -1e-11 * scale
    # the torchjd default (reg_eps = 1e-4) bounds the violation by reg_eps * tr(G) * w_i
    agg = UPGrad()
    d = _flat(agg(_split(j)))
    trace = float((j * j).sum())
    bound = 1e-4 * trace * agg.last_weights + 1e-11 * scale
    assert bool((_inner_products(d, j) >= -bound).all())


def test_upgrad_of_non_conflicting_gradients_is_their_mean() -> None:
    gen = torch.Generator().manual_seed(0)
    j = torch.rand(4, 6, generator=gen, dtype=torch.float64)  # positive entries: no conflict
    assert float((j @ j.T).min()) > 0
    _close(UPGrad(reg_eps=0.0)([j])[0], j.mean(0))


def test_upgrad_differs_from_mean_under_conflict() -> None:
    j = _gradient_set(3, 1, conflict=True)
    assert float((_flat(UPGrad()(_split(j))) - j.mean(0)).abs().max()) > 1e-3


@pytest.mark.parametrize("seed", range(10))
def test_dual_cone_qp_satisfies_kkt(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    k = 2 + seed % 6
    a = torch.randn(k, 3 + seed, generator=gen, dtype=torch.float64)
    g = a @ a.T + 1e-6 * torch.eye(k, dtype=torch.float64)
    u = torch.rand(k, generator=gen, dtype=torch.float64)
    v = project_weights(u, g)
    grad = g @ v
    scale = float(g.diagonal().max() * u.max())
    assert float((v - u).min()) >= 0
    assert float(grad.min()) >= -1e-12 * scale
    assert float(((v - u) * grad).abs().max()) <= 1e-12 * scale * float(v.abs().max())


def test_gramian_sums_over_parameters() -> None:
    j = _gradient_set(4, 0, True)
    _close(gramian(_split(j)), j @ j.T)


def test_invalid_values_name_the_parameter() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        MGDA(epsilon=0.0)
    with pytest.raises(ValueError, match="max_iters"):
        MGDA(max_iters=0)
    with pytest.raises(ValueError, match="reg_eps"):
        UPGrad(reg_eps=-1.0)
    with pytest.raises(ValueError, match="norm_eps"):
        UPGrad(norm_eps=-1.0)
    with pytest.raises(ValueError, match="rows"):
        MGDA()([torch.zeros(2, 3), torch.zeros(3, 3)])
    with pytest.raises(ValueError, match="seed or a generator"):
        PCGrad(seed=0, generator=torch.Generator())
    with pytest.raises(ValueError, match="orders"):
        PCGrad(orders=torch.zeros(2, 2, dtype=torch.long))([torch.zeros(3, 4)])
    with pytest.raises(ValueError, match="permutation"):
        PCGrad(orders=torch.zeros(3, 3, dtype=torch.long))([torch.zeros(3, 4)])


def test_pcgrad_generator_state_round_trips() -> None:
    j = _split(_gradient_set(5, 2, True))
    a = PCGrad(seed=4)
    a(j)
    state = a.state_dict()
    first = a(j)
    b = PCGrad(seed=99)
    b.load_state_dict(state)
    _close(_flat(b(j)), _flat(first), rel=0.0)


@pytest.mark.parametrize("module", [aggregators_module, backward_module])
def test_docstring_examples_run(module: object) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("make", [PCGrad, MGDA, UPGrad])
def test_edge_cases_zero_single_and_singular(make) -> None:  # type: ignore[no-untyped-def]
    zeros = torch.zeros(3, 4, dtype=torch.float64)
    assert torch.equal(make()([zeros])[0], torch.zeros(4, dtype=torch.float64))
    one = _gradient_set(1, 0, False)
    _close(_flat(make()(_split(one))), one[0])  # one gradient: itself
    # a repeated gradient and its negation: a singular Gramian
    j = _gradient_set(2, 3, True)
    j = torch.cat([j, j[:1], -j[:1]])
    d = _flat(make()(_split(j)))
    assert bool(torch.isfinite(d).all())
    if make is UPGrad:
        d = _flat(UPGrad(reg_eps=0.0)(_split(j)))
        scale = float(j.norm(dim=1).max()) ** 2
        assert float((j @ d).min()) >= -1e-11 * scale


@requires_torchjd
@pytest.mark.parametrize("seed", range(4))
def test_float32_gradients_match_torchjd_to_float32_rounding(seed: int) -> None:
    pytest.importorskip("qpsolvers")
    j = _gradient_set(4, seed, True).float()
    torch.manual_seed(seed)
    _close(_flat(PCGrad(seed=seed)(_split(j))), torchjd_aggregation.PCGrad()(j), rel=1e-5)
    _close(_flat(MGDA()(_split(j))), torchjd_aggregation.MGDA()(j), rel=1e-5)
    _close(_flat(UPGrad()(_split(j))), torchjd_aggregation.UPGrad()(j), rel=1e-5)
    assert _flat(UPGrad()(_split(j))).dtype == torch.float32
