"""GA filter combinations (GG'18 §3.1.2): never worse than the best single filter when seeded with it, finding a
planted complementary combination when not seeded, deterministic under a seed,
TopFilters = the top individual filters; SUS draws proportionally."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.engine.genetic import GAConfig, run_ga, stochastic_universal_sampling, top_filters
from analysis.engine.part_detection import DetectionMatching


def synthetic_matching(seed: int, n_filters: int = 40, n_gt: int = 60) -> DetectionMatching:
    """Filters that each find a different subset of the ground truth, plus noisy filters (false positives)."""
    rng = np.random.default_rng(seed)
    det_filter, det_score, det_gt = [], [], []
    for f in range(n_filters):
        good = f % 5 == 0
        n = int(rng.integers(5, 40))
        for _ in range(n):
            det_filter.append(f)
            det_score.append(rng.random() + (0.5 if good else 0.0))
            det_gt.append(int(rng.integers(0, n_gt)) if rng.random() < (0.7 if good else 0.1) else -1)
    return DetectionMatching(np.array(det_filter), np.array(det_score), np.array(det_gt), n_gt, n_filters)


@pytest.mark.parametrize("seed", range(4))
def test_ga_is_never_worse_than_the_best_single_filter(seed):
    matching = synthetic_matching(seed)
    singles, _ = matching.single_aps()
    result = run_ga(
        lambda z: matching.ap(z)[0],
        matching.n_filters,
        GAConfig(population=40, generations=15, seed=seed),
        best_single=int(np.argmax(singles)),
    )
    assert result.fitness >= singles.max()
    assert result.fitness == pytest.approx(matching.ap(result.chromosome)[0])
    assert result.history == sorted(result.history)  # best-so-far never decreases


def test_ga_finds_complementary_filters():
    matching = synthetic_matching(7)
    singles, _ = matching.single_aps()
    result = run_ga(
        lambda z: matching.ap(z)[0],
        matching.n_filters,
        GAConfig(population=60, generations=30),
        best_single=int(np.argmax(singles)),
    )
    assert result.fitness > singles.max() + 0.05  # here combining does help
    assert len(result.filters) > 1


def planted_complementary_matching(n_filters: int = 64, n_gt: int = 90, seed: int = 0) -> DetectionMatching:
    """Three planted filters each find a disjoint third of the ground truth with no false positive (single AP
    1/3 each, their union AP 1); every other filter fires at random with a few lucky hits among many misses."""
    rng = np.random.default_rng(seed)
    det_filter, det_score, det_gt = [], [], []
    planted = (5, 23, 41)
    for f in range(n_filters):
        if f in planted:
            third = planted.index(f)
            for g in range(third * n_gt // 3, (third + 1) * n_gt // 3):
                det_filter.append(f)
                det_score.append(2.0 + rng.random())
                det_gt.append(g)
        else:
            for _ in range(30):
                det_filter.append(f)
                det_score.append(float(rng.random()) * 2.5)
                det_gt.append(int(rng.integers(0, n_gt)) if rng.random() < 0.15 else -1)
    return DetectionMatching(np.array(det_filter), np.array(det_score), np.array(det_gt), n_gt, n_filters)


@pytest.mark.parametrize("seed", range(3))
def test_unseeded_ga_finds_a_planted_combination_that_beats_every_single_filter(seed):
    """Not by construction: the initial population does not contain the best single filter (no seeding), so
    beating every single filter means the search itself found the complementary filters."""
    matching = planted_complementary_matching(seed=seed)
    singles, _ = matching.single_aps()
    assert singles.max() < 0.4
    result = run_ga(lambda z: matching.ap(z)[0], matching.n_filters, GAConfig(seed_best_single=False, seed=seed))
    assert {5, 23, 41} <= set(result.filters)
    assert result.fitness > singles.max() + 0.4


def test_ga_is_deterministic_under_a_seed():
    matching = synthetic_matching(3)
    config = GAConfig(population=30, generations=10, seed=11)
    first = run_ga(lambda z: matching.ap(z)[0], matching.n_filters, config, best_single=0)
    second = run_ga(lambda z: matching.ap(z)[0], matching.n_filters, config, best_single=0)
    assert first.filters == second.filters and first.history == second.history


def test_top_filters_picks_the_top_individual_aps():
    singles = np.array([0.1, 0.5, 0.3, 0.5, 0.0, 0.2])
    assert np.flatnonzero(top_filters(singles, 3)).tolist() == [1, 2, 3]  # ties: lower index first
    assert np.flatnonzero(top_filters(singles, 1)).tolist() == [1]
    matching = synthetic_matching(1)
    aps, _ = matching.single_aps()
    for count in (1, 3, 5):
        chosen = np.flatnonzero(top_filters(aps, count))
        order = sorted(range(len(aps)), key=lambda f: (-aps[f], f))[:count]
        assert sorted(order) == chosen.tolist()


def test_sus_is_proportional():
    rng = np.random.default_rng(0)
    picks = np.concatenate([stochastic_universal_sampling(np.array([1.0, 3.0, 0.0, 4.0]), 8, rng) for _ in range(200)])
    counts = np.bincount(picks, minlength=4) / len(picks)
    assert counts == pytest.approx([1 / 8, 3 / 8, 0, 4 / 8], abs=1e-12)  # SUS has minimal spread
    assert set(stochastic_universal_sampling(np.zeros(3), 6, rng).tolist()) <= {0, 1, 2}
