"""Inter-rater agreement on categorical answers, with seeded bootstrap confidence intervals over items.

Pure numpy/statsmodels/krippendorff: no Django. Ratings come as a matrix ``int[n_items, n_raters]``
of category codes ``0 .. n_categories - 1``, with :data:`MISSING` (-1) where a rater gave no answer
to an item. Categories are nominal (unordered).

Which items each statistic uses (every figure carries its own ``n_items``):

* *pairable* items have at least two answers (after any excluded category is made missing);
* **percent agreement**: the mean over pairable items of the fraction of agreeing rater pairs among
  the item's answers (for two raters: the fraction of items with the same answer — GG'18 §4.1's 79%);
* **Cohen's κ**: only when exactly two raters answered pairable items; the items both answered
  (``statsmodels.stats.inter_rater.cohens_kappa``);
* **Fleiss' κ**: the items with the most common number ``m`` of answers among pairable items (ties:
  the larger ``m``), since Fleiss' κ assumes a constant number of raters per item; raters may differ
  between items (``statsmodels.stats.inter_rater.fleiss_kappa``);
* **Krippendorff's α** (nominal): every pairable item, missing answers allowed
  (``krippendorff.alpha(value_counts=…, level_of_measurement="nominal")``); with ``values`` (each category's
  number, e.g. purity counts) the *interval* α (``level_of_measurement="interval"``, δ² = (v_c − v_k)²), which
  credits near misses: raters answering 7 and 8 of 10 agree more than 1 and 8.

Point estimates come from the libraries. Bootstrap replicates resample items with replacement
(counts of uniform draws, ``numpy.random.default_rng(seed)``) and evaluate the same formulas in vectorised
closed form; at unit weights these equal the libraries' values (tests check it). A replicate whose
statistic is undefined (e.g. every resampled answer in one category: 0/0) is dropped; the interval is
the percentile interval of the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "MISSING",
    "AgreementSummary",
    "Estimate",
    "agreement_summary",
    "bootstrap_weights",
    "cohen_kappa",
    "count_table",
    "exclude_categories",
    "fleiss_kappa",
    "krippendorff_alpha",
    "pairable_items",
    "percent_agreement",
    "ratings_matrix",
    "type_distribution",
]

MISSING = -1
DEFAULT_REPLICATES = 2000
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A statistic with its percentile bootstrap interval (``None`` where undefined) and the items used."""

    value: float | None
    ci_low: float | None
    ci_high: float | None
    n_items: int
    replicates: int = 0

    def as_dict(self) -> dict:
        return {
            "value": self.value,
            "ci": [self.ci_low, self.ci_high] if self.ci_low is not None else None,
            "n_items": self.n_items,
        }


@dataclass(frozen=True)
class AgreementSummary:
    percent_agreement: Estimate | None
    cohen_kappa: Estimate | None
    fleiss_kappa: Estimate | None
    krippendorff_alpha: Estimate | None
    n_items: int
    n_raters: int
    n_answers: int
    excluded_categories: tuple[int, ...] = ()
    fleiss_raters_per_item: int | None = None
    confidence: float = DEFAULT_CONFIDENCE
    replicates: int = DEFAULT_REPLICATES
    seed: int = 0
    extra: dict = field(default_factory=dict)
    alpha_level: str = "nominal"

    STATISTICS = ("percent_agreement", "cohen_kappa", "fleiss_kappa", "krippendorff_alpha")

    def as_dict(self) -> dict:
        result = {
            name: (getattr(self, name).as_dict() if getattr(self, name) is not None else None)
            for name in self.STATISTICS
        }
        result.update(
            n_items=self.n_items,
            n_raters=self.n_raters,
            n_answers=self.n_answers,
            fleiss_raters_per_item=self.fleiss_raters_per_item,
            confidence=self.confidence,
            bootstrap={"replicates": self.replicates, "seed": self.seed, "method": "percentile"},
            krippendorff_alpha_level=self.alpha_level,
        )
        return result


# -- shaping ------------------------------------------------------------------------------------------


def ratings_matrix(triples: Sequence[tuple[object, object, int]]) -> tuple[np.ndarray, list, list]:
    """``(item, rater, code)`` triples → ``(int64[n_items, n_raters], items, raters)`` with MISSING holes.

    Items and raters keep their first-seen order. A later triple for the same (item, rater) wins.
    """
    items: dict[object, int] = {}
    raters: dict[object, int] = {}
    for item, rater, _ in triples:
        items.setdefault(item, len(items))
        raters.setdefault(rater, len(raters))
    matrix = np.full((len(items), len(raters)), MISSING, dtype=np.int64)
    for item, rater, code in triples:
        matrix[items[item], raters[rater]] = int(code)
    return matrix, list(items), list(raters)


def exclude_categories(matrix: np.ndarray, categories: Sequence[int]) -> np.ndarray:
    """A copy of ``matrix`` with answers in ``categories`` made missing (GG'18 rejects "not sure")."""
    result = np.array(matrix, dtype=np.int64, copy=True)
    if len(categories):
        result[np.isin(result, list(categories))] = MISSING
    return result


def count_table(matrix: np.ndarray, n_categories: int) -> np.ndarray:
    """``int64[n_items, n_categories]``: how many raters gave each category to each item."""
    matrix = np.asarray(matrix, dtype=np.int64)
    if matrix.size and (matrix.max() >= n_categories or matrix.min() < MISSING):
        raise ValueError(f"codes must lie in 0..{n_categories - 1} or be MISSING")
    table = np.zeros((matrix.shape[0], n_categories), dtype=np.int64)
    rows, cols = np.nonzero(matrix != MISSING)
    np.add.at(table, (rows, matrix[rows, cols]), 1)
    return table


def pairable_items(matrix: np.ndarray) -> np.ndarray:
    """Boolean mask of items with at least two answers."""
    return (np.asarray(matrix) != MISSING).sum(axis=1) >= 2


def _fleiss_rows(table: np.ndarray) -> tuple[np.ndarray, int | None]:
    """Rows used by Fleiss' κ: the most common answer count among pairable rows (ties: the larger)."""
    counts = table.sum(axis=1)
    pairable = counts[counts >= 2]
    if pairable.size == 0:
        return np.zeros(len(table), dtype=bool), None
    values, frequency = np.unique(pairable, return_counts=True)
    m = int(values[frequency == frequency.max()].max())
    return counts == m, m


def _two_rater_columns(matrix: np.ndarray) -> np.ndarray | None:
    """The answers of the two raters of a two-rater matrix, on the items both answered (else None)."""
    answered = matrix != MISSING
    raters = np.nonzero(answered[pairable_items(matrix)].any(axis=0))[0]
    if len(raters) != 2:
        return None
    pair = matrix[:, raters]
    return pair[(pair != MISSING).all(axis=1)]


# -- point estimates (the libraries) ------------------------------------------------------------------


def _nan_to_none(value: float) -> float | None:
    value = float(value)
    return None if not np.isfinite(value) else value


def percent_agreement(matrix: np.ndarray, n_categories: int) -> float | None:
    """Mean over pairable items of the fraction of agreeing rater pairs (two raters: same-answer rate)."""
    table = count_table(matrix, n_categories)
    table = table[table.sum(axis=1) >= 2]
    if not len(table):
        return None
    return float(_weighted_percent(np.ones((1, len(table))), table)[0])


def cohen_kappa(matrix: np.ndarray, n_categories: int) -> float | None:
    """Cohen's κ of a two-rater matrix over the items both answered (statsmodels); None otherwise."""
    from statsmodels.stats.inter_rater import cohens_kappa

    pair = _two_rater_columns(np.asarray(matrix))
    if pair is None or not len(pair):
        return None
    contingency = np.zeros((n_categories, n_categories))
    np.add.at(contingency, (pair[:, 0], pair[:, 1]), 1)
    margins = contingency.sum(axis=1) @ contingency.sum(axis=0) / contingency.sum() ** 2
    if np.isclose(margins, 1.0):
        return None  # one category only: chance agreement is 1 and κ is 0/0
    return _nan_to_none(cohens_kappa(contingency, return_results=False))


def fleiss_kappa(matrix: np.ndarray, n_categories: int) -> float | None:
    """Fleiss' κ (statsmodels) on the items with the most common number of answers."""
    from statsmodels.stats.inter_rater import fleiss_kappa as statsmodels_fleiss

    table = count_table(matrix, n_categories)
    rows, _ = _fleiss_rows(table)
    table = table[rows]
    if not len(table):
        return None
    shares = table.sum(axis=0) / table.sum()
    if np.isclose((shares**2).sum(), 1.0):
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        return _nan_to_none(statsmodels_fleiss(table, method="fleiss"))


def krippendorff_alpha(matrix: np.ndarray, n_categories: int, values: Sequence[float] | None = None) -> float | None:
    """Krippendorff's α (krippendorff package) over every pairable item: nominal, or interval when ``values``
    gives each category code's number (the codes are then that value domain, in order)."""
    import krippendorff

    table = count_table(matrix, n_categories)
    table = table[table.sum(axis=1) >= 2]
    if not len(table) or np.count_nonzero(table.sum(axis=0)) < 2:
        return None  # no pairable item, or a single category used: α is 0/0
    if values is None:
        return _nan_to_none(
            krippendorff.alpha(
                value_counts=table, value_domain=list(range(n_categories)), level_of_measurement="nominal"
            )
        )
    return _nan_to_none(
        krippendorff.alpha(value_counts=table, value_domain=[float(v) for v in values], level_of_measurement="interval")
    )


# -- vectorised forms for the bootstrap: weights float[B, n_rows] --------------------------------------


def _weighted_percent(weights: np.ndarray, table: np.ndarray) -> np.ndarray:
    m = table.sum(axis=1).astype(np.float64)
    per_item = (table * (table - 1)).sum(axis=1) / (m * (m - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return weights @ per_item / weights.sum(axis=1)


def _weighted_cohen(weights: np.ndarray, pair: np.ndarray, n_categories: int) -> np.ndarray:
    eye = np.eye(n_categories)
    first, second = eye[pair[:, 0]], eye[pair[:, 1]]
    total = weights.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        observed = weights @ (pair[:, 0] == pair[:, 1]).astype(np.float64) / total
        expected = ((weights @ first) * (weights @ second)).sum(axis=1) / total**2
        return (observed - expected) / (1.0 - expected)


def _weighted_fleiss(weights: np.ndarray, table: np.ndarray) -> np.ndarray:
    m = float(table.sum(axis=1)[0])
    per_item = ((table**2).sum(axis=1) - m) / (m * (m - 1))
    total = weights.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        observed = weights @ per_item / total
        shares = (weights @ table) / (total[:, None] * m)
        expected = (shares**2).sum(axis=1)
        return (observed - expected) / (1.0 - expected)


def _weighted_alpha(weights: np.ndarray, table: np.ndarray, values: Sequence[float] | None = None) -> np.ndarray:
    """Nominal α = 1 − (n − 1)(n − Σc o_cc) / (n² − Σc n_c²), o_cc = Σu n_uc(n_uc − 1)/(m_u − 1); with ``values``
    the interval α = 1 − (n − 1) Σu (n_u·δ²·n_u)/(m_u − 1) / (n_c·δ²·n_c), δ²_ck = (v_c − v_k)²."""
    m = table.sum(axis=1).astype(np.float64)
    n = weights @ m
    n_c = weights @ table
    if values is not None:
        v = np.asarray(values, dtype=np.float64)
        delta = (v[:, None] - v[None, :]) ** 2
        table = table.astype(np.float64)
        observed = np.einsum("uc,ck,uk->u", table, delta, table) / (m - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return 1.0 - (n - 1.0) * (weights @ observed) / np.einsum("bc,ck,bk->b", n_c, delta, n_c)
    diagonal = (table * (table - 1)).sum(axis=1) / (m - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 - (n - 1.0) * (n - weights @ diagonal) / (n**2 - (n_c**2).sum(axis=1))


def bootstrap_weights(n: int, *, replicates: int = DEFAULT_REPLICATES, seed: int = 0) -> np.ndarray:
    """``float64[replicates, n]``: how often each of ``n`` items is drawn in each resample (rows sum to n).

    Each row counts ``n`` uniform draws with replacement (``default_rng(seed).integers``).
    """
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(replicates, n)) + (np.arange(replicates) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=replicates * n).reshape(replicates, n).astype(np.float64)


def _estimate(value: float | None, replicate_values: np.ndarray | None, n_items: int, confidence: float) -> Estimate:
    if value is None or replicate_values is None:
        return Estimate(value, None, None, n_items)
    finite = replicate_values[np.isfinite(replicate_values)]
    if not finite.size:
        return Estimate(value, None, None, n_items)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    low, high = float(low), float(high)
    # Floating-point noise must not put a degenerate interval (all replicates equal) beside its estimate.
    if np.isclose(low, value):
        low = min(low, value)
    if np.isclose(high, value):
        high = max(high, value)
    return Estimate(value, low, high, n_items, int(finite.size))


def agreement_summary(
    matrix: np.ndarray,
    *,
    n_categories: int,
    exclude: Sequence[int] = (),
    replicates: int = DEFAULT_REPLICATES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
    values: Sequence[float] | None = None,
) -> AgreementSummary:
    """Every statistic of the module on ``matrix`` (``int[n_items, n_raters]``, MISSING holes), each with
    a ``confidence`` percentile bootstrap interval from ``replicates`` seeded resamples of its items.

    ``exclude``: category codes treated as no answer (GG'18 rejects "not sure": pass its code). ``values``: each
    category's number, for the interval Krippendorff α (counts); κ and percent agreement stay nominal.
    """
    matrix = exclude_categories(np.asarray(matrix, dtype=np.int64).reshape(len(matrix), -1), exclude)
    table = count_table(matrix, n_categories)
    pairable = table.sum(axis=1) >= 2
    n_items = int(pairable.sum())
    n_raters = int((matrix[pairable] != MISSING).any(axis=0).sum()) if n_items else 0

    def boot(n: int, salt: int) -> np.ndarray:
        return bootstrap_weights(n, replicates=replicates, seed=seed * 7919 + salt)

    percent = cohen = fleiss = alpha = None
    fleiss_m = None
    if n_items:
        pair_table = table[pairable]
        value = percent_agreement(matrix, n_categories)
        percent = _estimate(value, _weighted_percent(boot(n_items, 1), pair_table), n_items, confidence)
        value = krippendorff_alpha(matrix, n_categories, values)
        alpha = _estimate(
            value,
            _weighted_alpha(boot(n_items, 4), pair_table, values) if value is not None else None,
            n_items,
            confidence,
        )
        rows, fleiss_m = _fleiss_rows(table)
        value = fleiss_kappa(matrix, n_categories)
        fleiss = _estimate(
            value,
            _weighted_fleiss(boot(int(rows.sum()), 3), table[rows]) if value is not None else None,
            int(rows.sum()),
            confidence,
        )
        pair = _two_rater_columns(matrix)
        if pair is not None:
            value = cohen_kappa(matrix, n_categories)
            cohen = _estimate(
                value,
                _weighted_cohen(boot(len(pair), 2), pair, n_categories) if value is not None and len(pair) else None,
                len(pair),
                confidence,
            )
    return AgreementSummary(
        percent_agreement=percent,
        cohen_kappa=cohen,
        fleiss_kappa=fleiss,
        krippendorff_alpha=alpha,
        n_items=n_items,
        n_raters=n_raters,
        n_answers=int((matrix != MISSING).sum()),
        excluded_categories=tuple(exclude),
        fleiss_raters_per_item=fleiss_m,
        confidence=confidence,
        replicates=replicates,
        seed=seed,
        alpha_level="nominal" if values is None else "interval",
    )


# -- filter-type distributions (GG'18 Fig. 9) ------------------------------------------------------------


def type_distribution(
    task_answers: Sequence[Sequence[int]], n_categories: int, rejected: Sequence[int] = ()
) -> tuple[np.ndarray, int, int]:
    """Shares of each category over tasks, GG'18 Fig. 9 style.

    ``task_answers``: for each task (a unit of one class) the answers its raters gave. Answers in
    ``rejected`` are dropped (GG'18 rejects "not sure"); a task left without answers is rejected as a
    whole and leaves the denominator. A task with ``k`` remaining answers adds ``1/k`` for each, so one
    rater per task counts tasks, and several raters are averaged.

    Returns ``(shares float64[n_categories], kept_tasks, rejected_tasks)``; shares sum to 1 (or are all
    zero when no task is kept).
    """
    totals = np.zeros(n_categories, dtype=np.float64)
    kept = dropped = 0
    rejected_set = set(rejected)
    for answers in task_answers:
        remaining = [code for code in answers if code not in rejected_set]
        if not remaining:
            dropped += 1 if answers else 0
            continue
        kept += 1
        for code in remaining:
            totals[code] += 1.0 / len(remaining)
    return (totals / kept if kept else totals), kept, dropped
