"""Genetic algorithm with seed-chain genomes (Such et al., arXiv 1712.06567): decoding a seed chain
reproduces the parameters bit for bit, truncation selection keeps the top T, the generation loop
equals the algorithm written out step by step, and the GA fits a small regression."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

from gradkit.sources import GeneticAlgorithm


def _regression(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(-1, 1, 32, dtype=torch.float64).unsqueeze(1)
    y = torch.sin(3 * x) + 0.05 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    return model, x, y


def test_seed_chain_decodes_exactly() -> None:
    model, x, y = _regression()
    theta0 = nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    ga = GeneticAlgorithm(model.parameters(), population=12, truncation=4, sigma=0.05, seed=3)

    def loss() -> torch.Tensor:
        return nn.functional.mse_loss(model(x), y)

    for gen in range(15):
        ga.step(loss)
        # every individual of the next generation is rebuilt exactly from its seeds
        for genome, vector in zip(ga.genomes, ga.vectors):
            assert torch.equal(ga.decode(genome), vector)
            assert len(genome) <= gen + 2
        # the model holds the best individual, rebuilt from its seeds alone by hand
        theta = theta0.clone()
        for s in ga.best_genome:
            eps = torch.randn(
                theta.numel(), generator=torch.Generator().manual_seed(s), dtype=torch.float64
            )
            theta = theta + 0.05 * eps
        assert torch.equal(nn.utils.parameters_to_vector(model.parameters()), theta)
        assert ga.best_loss == loss().item()
    # compact: a genome is at most 16 integers here, against 25 floats
    assert max(len(g) for g in ga.genomes) <= 16 and theta0.numel() == 25


def test_truncation_selection_keeps_top_t() -> None:
    model, x, y = _regression()
    ga = GeneticAlgorithm(model.parameters(), population=10, truncation=3, elite=2, seed=1)
    losses = [5.0, 1.0, float("nan"), 0.5, 7.0, float("inf"), 0.5, 2.0, -1.0, 3.0]
    assert ga.select(losses) == [8, 3, 6]  # -1, then the tie 0.5 in index order
    # on random losses: the selected set is the T smallest, best first
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        v = torch.randn(10, generator=g, dtype=torch.float64)
        chosen = ga.select(v.tolist())
        assert chosen == torch.topk(-v, 3).indices.tolist()

    def loss() -> torch.Tensor:
        return nn.functional.mse_loss(model(x), y)

    for _ in range(5):
        before = list(ga.genomes)
        ga.step(loss)
        top = sorted(range(10), key=lambda i: ga.losses[i])[:3]
        assert ga.last_parents == top
        # elites: the best two, unchanged; children: one more seed on a top-3 parent
        assert ga.genomes[:2] == [before[top[0]], before[top[1]]]
        parents = {before[i] for i in top}
        for child in ga.genomes[2:]:
            assert child[:-1] in parents


def test_generation_loop_matches_algorithm_written_out() -> None:
    """The GA written out: N individuals, T parents, E elites, sigma, seeds from Random(seed)."""
    model, x, y = _regression(1)
    n, t, e, sigma = 8, 3, 1, 0.1
    theta0 = nn.utils.parameters_to_vector(model.parameters()).detach().clone()

    def f(theta: torch.Tensor) -> float:
        with torch.no_grad():
            nn.utils.vector_to_parameters(theta, model.parameters())
            return nn.functional.mse_loss(model(x), y).item()

    def eps(s: int) -> torch.Tensor:
        return torch.randn(25, generator=torch.Generator().manual_seed(s), dtype=torch.float64)

    rng = random.Random(7)
    pop = [theta0.clone()] + [theta0 + sigma * eps(rng.randrange(2**31 - 1)) for _ in range(n - 1)]
    expected = []
    for _ in range(12):
        fit = [f(p) for p in pop]
        order = sorted(range(n), key=lambda i: fit[i])[:t]
        expected.append(fit[order[0]])
        nxt = [pop[i] for i in order[:e]]
        while len(nxt) < n:
            k = order[rng.randrange(t)]
            nxt.append(pop[k] + sigma * eps(rng.randrange(2**31 - 1)))
        pop = nxt

    with torch.no_grad():
        nn.utils.vector_to_parameters(theta0, model.parameters())
    ga = GeneticAlgorithm(
        model.parameters(), population=n, truncation=t, sigma=sigma, elite=e, seed=7
    )
    got = [ga.step(lambda: nn.functional.mse_loss(model(x), y)) for _ in range(12)]
    assert got == expected
    # with an elite and a deterministic loss, the best loss never rises
    assert all(b <= a for a, b in zip(got, got[1:]))
    assert ga.cost.forward == 12 * n and ga.cost.calls == 12


def test_fits_a_small_regression() -> None:
    model, x, y = _regression()
    ga = GeneticAlgorithm(model.parameters(), population=40, truncation=8, sigma=0.05, seed=0)
    first = ga.step(lambda: nn.functional.mse_loss(model(x), y))
    for _ in range(150):
        last = ga.step(lambda: nn.functional.mse_loss(model(x), y))
    assert last < 0.1 * first
    assert math.isclose(nn.functional.mse_loss(model(x), y).item(), last)


def test_bad_arguments() -> None:
    w = [nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError, match="population"):
        GeneticAlgorithm(w, population=1)
    with pytest.raises(ValueError, match="truncation"):
        GeneticAlgorithm(w, population=5, truncation=6)
    with pytest.raises(ValueError, match="elite"):
        GeneticAlgorithm(w, population=5, truncation=2, elite=3)
    with pytest.raises(ValueError, match="sigma"):
        GeneticAlgorithm(w, sigma=0.0)
    with pytest.raises(ValueError, match="params"):
        GeneticAlgorithm([])
    with pytest.raises(ValueError, match="loss_fn"):
        GeneticAlgorithm(w, population=4, truncation=2).step(None)  # type: ignore[arg-type]


def test_nonfinite_losses_rank_last_and_float32() -> None:
    w = nn.Parameter(torch.zeros(4))  # float32
    ga = GeneticAlgorithm([w], population=6, truncation=2, sigma=0.5, seed=0)

    def loss() -> torch.Tensor:
        v = (w - 1).pow(2).sum()
        return torch.where(w[0] > 0, torch.tensor(float("nan")), v)

    for _ in range(5):
        best = ga.step(loss)
        assert math.isfinite(best) and not w[0].item() > 0
        for genome, vector in zip(ga.genomes, ga.vectors):
            assert vector.dtype == torch.float32 and torch.equal(ga.decode(genome), vector)
