"""A simple genetic algorithm over the flat parameter vector, genomes stored as seed chains.

Such, Madhavan, Conti, Lehman, Stanley, Clune, "Deep Neuroevolution: Genetic Algorithms Are a
Competitive Alternative for Training Deep Neural Networks for Reinforcement Learning", 2017,
arXiv 1712.06567.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from gradkit.errors import invalid_value
from gradkit.sources._base import Cost

__all__ = ["GeneticAlgorithm", "Genome"]

#: A genome: the seeds of the mutations that, applied in order to the initial parameters,
#: rebuild an individual's parameter vector.
Genome = tuple[int, ...]

_SEED_RANGE = 2**31 - 1


def _int_at_least(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise invalid_value(name, value, f"an integer >= {low}")
    return value


class GeneticAlgorithm:
    """Truncation-selection genetic algorithm with Gaussian mutation and elitism.

    A population of ``population`` parameter vectors is evaluated by ``loss_fn`` (lower is
    better). Each :meth:`step` (one generation)::

        evaluate every individual: f_i = loss_fn() with the parameters set to theta_i
        parents  = the ``truncation`` individuals with the lowest loss (truncation selection)
        elites   = the best ``elite`` individuals, carried over unchanged
        children = for each remaining slot: parent k uniform over the parents, a fresh seed s,
                   theta_child = theta_k + sigma * eps(s),   eps(s) ~ N(0, I) drawn from seed s

    The model's parameters are left at the best individual of the evaluated generation, and
    its loss is returned. An individual is stored as its *genome*, the chain of mutation seeds
    from the initial parameters ``theta_0`` (the parameters when the algorithm was built):
    ``decode(genome) = (((theta_0 + sigma eps(s_1)) + sigma eps(s_2)) + ...)``, a compact
    encoding (``len(genome)`` integers instead of ``d`` floats) that reproduces the vector
    exactly because it repeats the same additions in the same order. Generation 0 is
    ``theta_0`` itself and ``population - 1`` one-step mutations of it.

    Such, Madhavan, Conti, Lehman, Stanley, Clune, "Deep Neuroevolution: Genetic Algorithms Are
    a Competitive Alternative for Training Deep Neural Networks for Reinforcement Learning",
    2017, arXiv 1712.06567.

    *Reconstructed from the abstract* (which names the algorithm, its scale and the compact
    encoding only): the generation loop above, re-evaluating elites every generation (so a
    noisy or minibatch loss is handled as fresh evidence), generation 0, ``theta_0`` being the
    given parameters rather than a seeded initialization, and the defaults.

    Args:
        params: the tensors to evolve (all of one dtype).
        population: individuals per generation (>= 2).
        truncation: how many of the best become parents (1..population).
        sigma: mutation standard deviation (> 0).
        elite: how many of the best are copied unchanged (0..truncation).
        seed: seeds the draws of mutation seeds and of parents.

    Cost: ``cost.forward`` counts ``loss_fn`` evaluations (``population`` per step).

    >>> import torch
    >>> from gradkit.sources import GeneticAlgorithm
    >>> w = torch.nn.Parameter(torch.zeros(3))
    >>> target = torch.tensor([1.0, -2.0, 0.5])
    >>> ga = GeneticAlgorithm([w], population=20, truncation=5, sigma=0.1, seed=0)
    >>> losses = [ga.step(lambda: (w - target).pow(2).sum()) for _ in range(60)]
    >>> losses[-1] < 0.05 * losses[0]
    True
    >>> torch.equal(ga.decode(ga.best_genome), w.detach())
    True
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        *,
        population: int = 50,
        truncation: int = 10,
        sigma: float = 0.02,
        elite: int = 1,
        seed: int = 0,
    ) -> None:
        self.params = [p for p in params]
        if not self.params:
            raise invalid_value("params", self.params, "a non-empty iterable of tensors")
        if len({p.dtype for p in self.params}) != 1:
            raise ValueError("Invalid params: all tensors must have one dtype")
        self.population = _int_at_least("population", population, 2)
        if isinstance(truncation, bool) or not isinstance(truncation, int):
            raise invalid_value("truncation", truncation, f"an integer in [1, {population}]")
        if not 1 <= truncation <= population:
            raise invalid_value("truncation", truncation, f"an integer in [1, {population}]")
        self.truncation = truncation
        if isinstance(elite, bool) or not isinstance(elite, int) or not 0 <= elite <= truncation:
            raise invalid_value("elite", elite, f"an integer in [0, truncation={truncation}]")
        self.elite = elite
        if (
            isinstance(sigma, bool)
            or not isinstance(sigma, (int, float))
            or not 0 < sigma < math.inf
        ):
            raise invalid_value("sigma", sigma, "a finite number > 0")
        self.sigma = float(sigma)
        self.rng = random.Random(seed)
        with torch.no_grad():
            self.theta0 = parameters_to_vector(self.params).detach().clone()
        self.cost = Cost()
        self.generation = 0
        self.genomes: list[Genome] = [()] + [
            (self._new_seed(),) for _ in range(self.population - 1)
        ]
        self.vectors: list[Tensor] = [self.decode(g) for g in self.genomes]
        self.losses: list[float] = []
        self.best_genome: Genome = ()
        self.best_loss = math.inf
        self.last_parents: list[int] = []

    def __repr__(self) -> str:
        return (
            f"GeneticAlgorithm(population={self.population}, truncation={self.truncation}, "
            f"sigma={self.sigma}, elite={self.elite})"
        )

    def _new_seed(self) -> int:
        return self.rng.randrange(_SEED_RANGE)

    def noise(self, seed: int) -> Tensor:
        """``eps(seed)``: standard normal, one entry per parameter scalar, drawn on the CPU."""
        gen = torch.Generator().manual_seed(seed)
        eps = torch.randn(self.theta0.numel(), generator=gen, dtype=self.theta0.dtype)
        return eps.to(self.theta0.device)

    def decode(self, genome: Sequence[int]) -> Tensor:
        """The parameter vector of a genome: ``theta_0`` plus its mutations, in order."""
        theta = self.theta0.clone()
        for s in genome:
            theta = theta + self.sigma * self.noise(s)
        return theta

    def select(self, losses: Sequence[float]) -> list[int]:
        """Truncation selection: indices of the ``truncation`` lowest losses, best first
        (non-finite losses rank last; ties keep the earlier index)."""
        key = [v if math.isfinite(v) else math.inf for v in losses]
        return sorted(range(len(key)), key=lambda i: key[i])[: self.truncation]

    def _load(self, vector: Tensor) -> None:
        with torch.no_grad():
            vector_to_parameters(vector, self.params)

    def step(self, loss_fn: Callable[[], Tensor | float]) -> float:
        """One generation: evaluate, select, leave the parameters at the best individual,
        breed the next generation. Returns the best loss of the evaluated generation."""
        if not callable(loss_fn):
            raise ValueError("Invalid loss_fn: it must be callable () -> loss")
        losses = []
        with torch.no_grad():
            for v in self.vectors:
                self._load(v)
                losses.append(float(loss_fn()))
        self.cost = self.cost + Cost(forward=len(losses), calls=1)
        self.losses = losses
        parents = self.select(losses)
        self.last_parents = parents
        best = parents[0]
        self.best_genome, self.best_loss = self.genomes[best], losses[best]
        self._load(self.vectors[best])
        genomes = [self.genomes[i] for i in parents[: self.elite]]
        vectors = [self.vectors[i] for i in parents[: self.elite]]
        while len(genomes) < self.population:
            k = parents[self.rng.randrange(len(parents))]
            s = self._new_seed()
            genomes.append(self.genomes[k] + (s,))
            vectors.append(self.vectors[k] + self.sigma * self.noise(s))
        self.genomes, self.vectors = genomes, vectors
        self.generation += 1
        return self.best_loss
