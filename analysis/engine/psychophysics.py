"""Two-alternative forced-choice psychophysics of units (Borowski et al., ICLR 2021; Zimmermann et al., NeurIPS 2023).

Pure numerics: numpy and scipy only (no Django, no torch: report pages import it); the machine proxy observer,
which needs torch, lives in :mod:`analysis.engine.machine_proxy`. The crowd wing plans trials with
:func:`plan_unit_trials`, scores answers with :func:`clopper_pearson`, compares conditions with
:func:`paired_condition_test`, relates human scores to automatic ones with :func:`rank_correlation`, and gets a
score for every unit without people from :func:`proxy_observer` (the spirit of Zimmermann et al. 2024's machine
interpretability score).

Conventions: image indices are dataset indices (``int``); ranks are 1-based (rank 1 is the most activating image
for "top" and the least activating for "bottom"); a unit's per-image score is its map maximum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = [
    "CHANCE",
    "PairedTest",
    "TrialPlan",
    "binomial_test_p",
    "clopper_pearson",
    "paired_condition_test",
    "plan_unit_trials",
    "rank_correlation",
    "ranked_images",
]

CHANCE = 0.5
"""Two alternatives: guessing is right half the time."""


def clopper_pearson(successes, trials, *, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Exact binomial (Clopper–Pearson) ``1 - alpha`` interval of a proportion, vectorised.

    ``successes`` and ``trials``: integer arrays of one shape (``trials >= successes >= 0``). Returns
    ``(low, high)`` float64 arrays of that shape; ``nan`` where ``trials == 0``. The same figures as
    ``statsmodels.stats.proportion.proportion_confint(method="beta")``.
    """
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        low = np.where(k > 0, stats.beta.ppf(alpha / 2, k, n - k + 1), 0.0)
        high = np.where(k < n, stats.beta.ppf(1 - alpha / 2, k + 1, n - k), 1.0)
    empty = n <= 0
    return np.where(empty, np.nan, low), np.where(empty, np.nan, high)


@dataclass(frozen=True)
class PairedTest:
    """Condition ``a`` against ``b`` over the units that have both: ``n`` units, ``mean_difference`` (a − b),
    the Wilcoxon signed-rank test (two-sided, zero differences dropped as scipy's default ``zero_method="wilcox"``)
    and the paired t-test. ``None`` where a test is undefined (fewer than 2 units, or no non-zero difference)."""

    n: int
    mean_difference: float | None
    wilcoxon_statistic: float | None
    wilcoxon_p: float | None
    t_statistic: float | None
    t_p: float | None


def paired_condition_test(a, b) -> PairedTest:
    """Paired tests over units of per-unit proportions correct ``a[i]`` and ``b[i]`` (``float[n]``, NaN = unit
    lacks that condition: dropped pairwise)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = int(a.size)
    if n == 0:
        return PairedTest(0, None, None, None, None, None)
    difference = a - b
    mean = float(difference.mean())
    if n < 2:
        return PairedTest(n, mean, None, None, None, None)
    w_stat = w_p = None
    if np.any(difference != 0):
        result = stats.wilcoxon(a, b)
        w_stat, w_p = float(result.statistic), float(result.pvalue)
    t_stat = t_p = None
    if np.std(difference) > 0:
        result = stats.ttest_rel(a, b)
        t_stat, t_p = float(result.statistic), float(result.pvalue)
    return PairedTest(n, mean, w_stat, w_p, t_stat, t_p)


def rank_correlation(x, y) -> tuple[float | None, float | None, int]:
    """Spearman's rho between ``x`` and ``y`` (``float[n]``; pairs with a NaN dropped): ``(rho, p, n)``; rho and
    p are None with fewer than 3 pairs or a constant side."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None, None, n
    result = stats.spearmanr(x, y)
    return float(result.statistic), float(result.pvalue), n


# -- trial planning ----------------------------------------------------------------------------------------------


def ranked_images(scores: np.ndarray) -> np.ndarray:
    """``int64[N]``: image indices from most to least activating (``scores``: ``float[N]``, one unit's map maxima);
    ties broken by the lower index first, so planning is reproducible."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.lexsort((np.arange(scores.size), -scores)).astype(np.int64)


@dataclass(frozen=True)
class TrialPlan:
    """One unit's trials. References (``int64[R]`` image indices, best first: ``top[0]`` is rank 1) for the
    extremal conditions and for the non-extremal one (empty when not asked); ``queries``: ``int64[T, 2]``
    ``(strong, weak)`` image indices per trial with their ranks ``query_ranks`` (``int64[T, 2]``: the strong
    query's rank from the top, the weak query's from the bottom); ``catch``: ``bool[T]`` (the queries are
    references themselves: an obvious answer)."""

    top: np.ndarray
    bottom: np.ndarray
    top_non_extremal: np.ndarray
    bottom_non_extremal: np.ndarray
    queries: np.ndarray
    query_ranks: np.ndarray
    catch: np.ndarray


def plan_unit_trials(
    scores: np.ndarray,
    *,
    rng: np.random.Generator,
    n_trials: int,
    n_catch: int = 0,
    reference_count: int = 9,
    query_ranks: tuple[int, int] = (10, 19),
    non_extremal_ranks: tuple[int, int] | None = None,
) -> TrialPlan:
    """Plan the forced-choice trials of one unit from its per-image scores (``float[N]``).

    * References: the ``reference_count`` most and least activating images (Borowski et al.: 9 + 9).
    * Queries: per trial one strong query drawn uniformly, without replacement, from the top ranks
      ``query_ranks`` (inclusive, 1-based) and one weak query from the same ranks counted from the bottom. Our
      choice: Borowski et al. drew queries from the extremes of a separate image set and Zimmermann et al. from
      fixed activation quantiles; a probe set is small, so we take the ranks just after the references — the
      strongest and weakest images that are not references. A query is never a reference.
    * Non-extremal references (``non_extremal_ranks``, our choice; Zimmermann et al. 2023 varied how extreme the
      exemplars are): ``reference_count`` images evenly spaced over those ranks from the top and from the bottom,
      disjoint from the query pools.
    * Catch trials (``n_catch``): the strong query is one of the top references and the weak one of the bottom
      references (Zimmermann et al.'s "obvious answer" trials).

    Raises ``ValueError`` when the images do not allow disjoint pools.
    """
    order = ranked_images(scores)
    n = order.size
    first, last = query_ranks
    if not 1 <= reference_count < first <= last:
        raise ValueError("query ranks must lie after the references: 1 <= reference_count < first <= last")
    needed = last
    if non_extremal_ranks is not None:
        low, high = non_extremal_ranks
        if not last < low <= high or high - low + 1 < reference_count:
            raise ValueError("non-extremal ranks must lie after the query ranks and hold reference_count images")
        needed = high
    if 2 * needed > n:
        raise ValueError(f"{n} images are too few: top and bottom pools of {needed} ranks each would overlap")
    pool = last - first + 1
    if n_trials > pool:
        raise ValueError(f"{n_trials} trials need as many query images; ranks {first}-{last} hold {pool}")
    bottom_order = order[::-1]
    top, bottom = order[:reference_count].copy(), bottom_order[:reference_count].copy()
    strong_rank = rng.choice(np.arange(first, last + 1), size=n_trials, replace=False)
    weak_rank = rng.choice(np.arange(first, last + 1), size=n_trials, replace=False)
    reference_ranks = np.arange(1, reference_count + 1)
    catch_rank = np.stack(
        [
            rng.choice(reference_ranks, size=n_catch, replace=n_catch > reference_count),
            rng.choice(reference_ranks, size=n_catch, replace=n_catch > reference_count),
        ],
        axis=1,
    ).reshape(n_catch, 2)
    ranks = np.concatenate([np.stack([strong_rank, weak_rank], axis=1).reshape(n_trials, 2), catch_rank])
    queries = np.stack([order[ranks[:, 0] - 1], bottom_order[ranks[:, 1] - 1]], axis=1)
    catch = np.concatenate([np.zeros(n_trials, dtype=bool), np.ones(n_catch, dtype=bool)])
    empty = np.zeros(0, dtype=np.int64)
    top_ne = bottom_ne = empty
    if non_extremal_ranks is not None:
        picks = np.round(np.linspace(non_extremal_ranks[0], non_extremal_ranks[1], reference_count)).astype(np.int64)
        top_ne, bottom_ne = order[picks - 1].copy(), bottom_order[picks - 1].copy()
    return TrialPlan(
        top=top,
        bottom=bottom,
        top_non_extremal=top_ne,
        bottom_non_extremal=bottom_ne,
        queries=queries.astype(np.int64),
        query_ranks=ranks.astype(np.int64),
        catch=catch,
    )


def binomial_test_p(successes: int, trials: int, *, chance: float = CHANCE) -> float:
    """Two-sided exact binomial test of ``successes`` out of ``trials`` against ``chance`` (nan without trials)."""
    if trials <= 0:
        return math.nan
    return float(stats.binomtest(int(successes), int(trials), chance).pvalue)
