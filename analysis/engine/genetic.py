"""Filter combinations for part detection (GG'18 §3.1.2): a genetic algorithm, TopFilters, all filters.

The search space is binary chromosomes ``z ∈ {0, 1}^N`` over a layer's N filters; the fitness of ``z`` is the AP
of the union of the selected filters' detections (any callable ``fitness(z) -> float``; with
:class:`analysis.engine.part_detection.DetectionMatching` an evaluation costs microseconds and repeated
chromosomes are cached).

The paper's settings are the defaults of :class:`GAConfig`: population 200, 100 generations, stochastic
universal sampling (Mitchell 1998), crossover probability 0.7, mutation probability 0.3, initial genes set with
``P(z_i = 1) = 0.02``. Where the paper is silent, our choices (named parameters):

* crossover: single-point, applied to consecutive pairs of the selected parents with probability 0.7;
* mutation: with probability 0.3 per chromosome, one uniformly chosen gene is flipped (a per-gene rate of 0.3
  would rewrite a third of a 256-filter chromosome each generation, contradicting the sparse initialisation);
* ``elitism=1``: the best chromosome of a generation is carried to the next unchanged;
* ``seed_best_single=True``: the first chromosome of the initial population is the best single filter, so the
  GA's answer is never worse than the best single filter (the paper reports GA ≥ best single as an outcome);
* the result is the best chromosome evaluated in any generation (ties: the earliest found);
* everything draws from ``numpy.random.default_rng(seed)``: the same seed gives the same result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["GAConfig", "GAResult", "run_ga", "stochastic_universal_sampling", "top_filters"]


@dataclass(frozen=True)
class GAConfig:
    population: int = 200
    generations: int = 100
    crossover: float = 0.7
    mutation: float = 0.3
    init_probability: float = 0.02
    elitism: int = 1
    seed_best_single: bool = True
    seed: int = 0


@dataclass
class GAResult:
    chromosome: np.ndarray  # bool [N]
    fitness: float
    history: list[float] = field(default_factory=list)  # best fitness so far after each generation
    evaluations: int = 0

    @property
    def filters(self) -> list[int]:
        return np.flatnonzero(self.chromosome).tolist()


def stochastic_universal_sampling(fitness: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` indices drawn proportionally to ``fitness`` (≥ 0) with one random offset and equally spaced
    pointers (Baker's SUS). All-zero fitness: uniform."""
    fitness = np.clip(np.asarray(fitness, dtype=np.float64), 0, None)
    total = fitness.sum()
    if total <= 0:
        fitness, total = np.ones_like(fitness), float(len(fitness))
    step = total / count
    pointers = rng.uniform(0, step) + step * np.arange(count)
    cumulative = np.cumsum(fitness)
    return np.minimum(np.searchsorted(cumulative, pointers, side="right"), len(fitness) - 1)


def run_ga(
    fitness: Callable[[np.ndarray], float],
    n_genes: int,
    config: GAConfig = GAConfig(),
    best_single: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> GAResult:
    """Maximise ``fitness`` over bool chromosomes of length ``n_genes`` (see the module docstring)."""
    rng = np.random.default_rng(config.seed)
    size = config.population
    population = rng.random((size, n_genes)) < config.init_probability
    if config.seed_best_single and best_single is not None:
        population[0] = False
        population[0, best_single] = True
    evaluations = 0

    def evaluate(pop: np.ndarray) -> np.ndarray:
        nonlocal evaluations
        evaluations += len(pop)
        return np.array([fitness(chromosome) for chromosome in pop], dtype=np.float64)

    scores = evaluate(population)
    best_index = int(np.argmax(scores))
    best, best_fitness = population[best_index].copy(), float(scores[best_index])
    history = []
    for generation in range(config.generations):
        elite = population[np.argsort(-scores, kind="stable")[: config.elitism]].copy()
        parents = population[rng.permutation(stochastic_universal_sampling(scores, size, rng))]
        children = parents.copy()
        for first in range(0, size - 1, 2):
            if rng.random() < config.crossover and n_genes > 1:
                point = int(rng.integers(1, n_genes))
                children[first, point:], children[first + 1, point:] = (
                    parents[first + 1, point:].copy(),
                    parents[first, point:].copy(),
                )
        flips = rng.random(size) < config.mutation
        genes = rng.integers(0, n_genes, size)
        children[flips, genes[flips]] ^= True
        if config.elitism:
            children[: config.elitism] = elite
        population = children
        scores = evaluate(population)
        index = int(np.argmax(scores))
        if scores[index] > best_fitness:
            best, best_fitness = population[index].copy(), float(scores[index])
        history.append(best_fitness)
        if progress is not None:
            progress(generation + 1)
    return GAResult(chromosome=best, fitness=best_fitness, history=history, evaluations=evaluations)


def top_filters(single_fitness: np.ndarray, count: int) -> np.ndarray:
    """TopFilters (GG'18 §4.2): the ``count`` filters of highest individual AP (ties: lower index), as a bool
    chromosome."""
    single_fitness = np.asarray(single_fitness, dtype=np.float64)
    order = np.lexsort((np.arange(len(single_fitness)), -single_fitness))
    chromosome = np.zeros(len(single_fitness), dtype=bool)
    chromosome[order[: max(0, count)]] = True
    return chromosome
