"""Agreement statistics (analysis.engine.agreement): textbook values, library equality, bootstrap intervals.

Pure engine tests: no database.
"""

from __future__ import annotations

import numpy as np
import pytest

from analysis.engine import agreement
from analysis.engine.agreement import MISSING, agreement_summary

# Fleiss (1971), Table 1: 30 patients, 6 psychiatrists each, 5 diagnoses (1 depression, 2 personality
# disorder, 3 schizophrenia, 4 neurosis, 5 other) — as in statsmodels' tests of fleiss_kappa. κ = 0.430.
FLEISS_1971 = (
    np.array(
        [
            [4, 4, 4, 4, 4, 4],
            [2, 2, 2, 5, 5, 5],
            [2, 3, 3, 3, 3, 5],
            [5, 5, 5, 5, 5, 5],
            [2, 2, 2, 4, 4, 4],
            [1, 1, 3, 3, 3, 3],
            [3, 3, 3, 3, 5, 5],
            [1, 1, 3, 3, 3, 4],
            [1, 1, 4, 4, 4, 4],
            [5, 5, 5, 5, 5, 5],
            [1, 4, 4, 4, 4, 4],
            [1, 2, 4, 4, 4, 4],
            [2, 2, 2, 3, 3, 3],
            [1, 4, 4, 4, 4, 4],
            [2, 2, 4, 4, 4, 5],
            [3, 3, 3, 3, 3, 5],
            [1, 1, 1, 4, 5, 5],
            [1, 1, 1, 1, 1, 2],
            [2, 2, 4, 4, 4, 4],
            [1, 3, 3, 5, 5, 5],
            [5, 5, 5, 5, 5, 5],
            [2, 4, 4, 4, 4, 4],
            [2, 2, 4, 5, 5, 5],
            [1, 1, 4, 4, 4, 4],
            [1, 4, 4, 4, 4, 5],
            [2, 2, 2, 2, 2, 4],
            [1, 1, 1, 1, 5, 5],
            [2, 2, 4, 4, 4, 4],
            [1, 3, 3, 3, 3, 3],
            [5, 5, 5, 5, 5, 5],
        ]
    )
    - 1
)

# Wikipedia's Fleiss' κ worked example: 10 subjects, 14 raters, counts per category; κ = 0.210.
WIKIPEDIA_FLEISS_COUNTS = np.array(
    [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
)

# Krippendorff's α examples of the krippendorff package (its README; Krippendorff 2011, nominal).
KRIPPENDORFF_3_CODERS = [
    [None, None, None, None, None, 3, 4, 1, 2, 1, 1, 3, 3, None, 3],
    [1, None, 2, 1, 3, 3, 4, 3, None, None, None, None, None, None, None],
    [None, None, 2, 1, 3, 4, 4, None, 2, 1, 1, 3, 3, None, 4],
]
KRIPPENDORFF_2011 = [  # "Computing Krippendorff's alpha-reliability", 4 observers × 12 units, nominal α = 0.743
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def coders_to_matrix(rows) -> np.ndarray:
    """Coder-major lists with None holes and 1-based codes → int[items, raters] with MISSING."""
    return np.array([[MISSING if value is None else value - 1 for value in row] for row in rows]).T


def counts_to_matrix(counts: np.ndarray) -> np.ndarray:
    """A subjects × categories count table → one rating per column (raters need not be the same people)."""
    return np.array([np.repeat(np.arange(counts.shape[1]), row) for row in counts])


def cohen_matrix(both_yes: int, yes_no: int, no_yes: int, both_no: int) -> np.ndarray:
    return np.array([[0, 0]] * both_yes + [[0, 1]] * yes_no + [[1, 0]] * no_yes + [[1, 1]] * both_no)


def test_fleiss_kappa_equals_fleiss_1971_and_statsmodels():
    from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

    assert agreement.fleiss_kappa(FLEISS_1971, 5) == pytest.approx(0.430, abs=5e-4)
    assert agreement.fleiss_kappa(FLEISS_1971, 5) == pytest.approx(fleiss_kappa(aggregate_raters(FLEISS_1971)[0]))
    matrix = counts_to_matrix(WIKIPEDIA_FLEISS_COUNTS)
    assert matrix.shape == (10, 14)
    assert agreement.fleiss_kappa(matrix, 5) == pytest.approx(0.210, abs=5e-4)
    # Wikipedia's P̄ = 0.378: the mean pairwise agreement is our percent agreement for many raters.
    assert agreement.percent_agreement(matrix, 5) == pytest.approx(0.378, abs=5e-4)


def test_cohen_kappa_equals_the_hand_computation():
    # 50 proposals, two readers: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no.
    # p_o = 35/50 = 0.7; p_e = 0.5·0.6 + 0.5·0.4 = 0.5; κ = (0.7 − 0.5)/(1 − 0.5) = 0.4.
    matrix = cohen_matrix(20, 5, 10, 15)
    assert agreement.percent_agreement(matrix, 2) == pytest.approx(0.7)
    assert agreement.cohen_kappa(matrix, 2) == pytest.approx(0.4)
    # statsmodels' SAS-checked table: κ = 0.4842.
    table = [[0, 4, 1], [0, 8, 0], [0, 1, 5]]
    pairs = np.array([[i, j] for i in range(3) for j in range(3) for _ in range(table[i][j])])
    assert agreement.cohen_kappa(pairs, 3) == pytest.approx(0.4842, abs=5e-5)


def test_krippendorff_alpha_equals_the_published_values_and_the_library():
    import krippendorff

    three = coders_to_matrix(KRIPPENDORFF_3_CODERS)
    assert agreement.krippendorff_alpha(three, 4) == pytest.approx(0.691358, abs=1e-6)
    four = coders_to_matrix(KRIPPENDORFF_2011)
    assert agreement.krippendorff_alpha(four, 5) == pytest.approx(0.743, abs=5e-4)
    reliability = np.where(four.T == MISSING, np.nan, four.T.astype(float))
    assert agreement.krippendorff_alpha(four, 5) == pytest.approx(
        krippendorff.alpha(reliability_data=reliability, level_of_measurement="nominal")
    )


def test_interval_krippendorff_alpha_equals_the_published_value_and_its_bootstrap_form():
    """Krippendorff (2011)'s 4 × 12 example has interval α = 0.849 (nominal 0.743); codes 0..4 carry the values
    1..5. The vectorised form on resampling weights equals the library on the resampled items."""
    four = coders_to_matrix(KRIPPENDORFF_2011)
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert agreement.krippendorff_alpha(four, 5, values) == pytest.approx(0.849, abs=5e-4)
    summary = agreement_summary(four, n_categories=5, values=values, replicates=100)
    assert summary.alpha_level == "interval" and summary.krippendorff_alpha.value == pytest.approx(0.849, abs=5e-4)
    assert agreement_summary(four, n_categories=5, replicates=0).alpha_level == "nominal"
    table = agreement.count_table(four, 5)
    table = table[table.sum(axis=1) >= 2]
    pairable = four[agreement.pairable_items(four)]
    rng = np.random.default_rng(1)
    for _ in range(5):
        index = rng.integers(0, len(table), len(table))
        weights = np.bincount(index, minlength=len(table))[None, :].astype(float)
        assert agreement._weighted_alpha(weights, table, values)[0] == pytest.approx(
            agreement.krippendorff_alpha(pairable[index], 5, values)
        )


@pytest.mark.parametrize("raters", [2, 3])
def test_perfect_agreement_gives_one_with_a_degenerate_interval(raters):
    answers = np.array([0, 1, 2, 3, 4, 1, 3, 0, 2, 2])
    summary = agreement_summary(np.repeat(answers[:, None], raters, axis=1), n_categories=5)
    for name in ("percent_agreement", "fleiss_kappa", "krippendorff_alpha") + (("cohen_kappa",) if raters == 2 else ()):
        estimate = getattr(summary, name)
        assert estimate.value == pytest.approx(1.0), name
        assert estimate.ci_low == pytest.approx(1.0) and estimate.ci_high == pytest.approx(1.0), name
    assert (summary.cohen_kappa is None) is (raters != 2)
    assert summary.n_items == 10 and summary.n_raters == raters


@pytest.mark.parametrize(
    "name,matrix,categories",
    [
        ("fleiss", FLEISS_1971, 5),
        ("cohen", cohen_matrix(20, 5, 10, 15), 2),
        ("krippendorff", coders_to_matrix(KRIPPENDORFF_2011), 5),
    ],
)
def test_each_interval_covers_its_estimate_and_is_seeded(name, matrix, categories):
    summary = agreement_summary(matrix, n_categories=categories, replicates=1000, seed=3)
    again = agreement_summary(matrix, n_categories=categories, replicates=1000, seed=3)
    other = agreement_summary(matrix, n_categories=categories, replicates=1000, seed=4)
    checked = moved = 0
    for statistic in summary.STATISTICS:
        estimate = getattr(summary, statistic)
        if estimate is None:
            continue
        checked += 1
        assert estimate.ci_low <= estimate.value <= estimate.ci_high, (statistic, estimate)
        assert estimate.ci_low < estimate.ci_high, statistic  # real disagreement: a real interval
        assert estimate.replicates > 900
        assert getattr(again, statistic) == estimate
        assert getattr(other, statistic).value == estimate.value
        moved += (getattr(other, statistic).ci_low, getattr(other, statistic).ci_high) != (
            estimate.ci_low,
            estimate.ci_high,
        )
    assert checked >= 3
    assert moved >= 1  # another seed resamples differently (a discrete statistic may land on the same interval)


def test_the_vectorised_bootstrap_forms_equal_the_libraries_on_resampled_items():
    """A bootstrap weight vector is a resample: the closed forms on weights = the libraries on the rows."""
    rng = np.random.default_rng(0)
    table = agreement.count_table(FLEISS_1971, 5)
    pair = cohen_matrix(20, 5, 10, 15)
    four = coders_to_matrix(KRIPPENDORFF_2011)
    four_table = agreement.count_table(four, 5)
    four_table = four_table[four_table.sum(axis=1) >= 2]
    four_pairable = four[agreement.pairable_items(four)]
    for _ in range(5):
        index = rng.integers(0, len(table), len(table))
        weights = np.bincount(index, minlength=len(table))[None, :].astype(float)
        assert agreement._weighted_fleiss(weights, table)[0] == pytest.approx(
            agreement.fleiss_kappa(FLEISS_1971[index], 5)
        )
        assert agreement._weighted_percent(weights, table)[0] == pytest.approx(
            agreement.percent_agreement(FLEISS_1971[index], 5)
        )
        index = rng.integers(0, len(pair), len(pair))
        weights = np.bincount(index, minlength=len(pair))[None, :].astype(float)
        assert agreement._weighted_cohen(weights, pair, 2)[0] == pytest.approx(agreement.cohen_kappa(pair[index], 2))
        index = rng.integers(0, len(four_table), len(four_table))
        weights = np.bincount(index, minlength=len(four_table))[None, :].astype(float)
        assert agreement._weighted_alpha(weights, four_table)[0] == pytest.approx(
            agreement.krippendorff_alpha(four_pairable[index], 5)
        )


def test_excluding_a_category_makes_its_answers_missing():
    # Codes: 0 part, 1 background, 2 other, 3 no, 4 not sure. Two raters, five items.
    matrix = np.array([[0, 0], [3, 3], [4, 3], [1, 4], [2, 0]])
    kept = agreement_summary(matrix, n_categories=5)
    excluded = agreement_summary(matrix, n_categories=5, exclude=[4])
    assert kept.n_items == 5 and kept.percent_agreement.value == pytest.approx(2 / 5)
    # With "not sure" rejected, items 3 and 4 have one answer each: three pairable items, 2 agree.
    assert excluded.n_items == 3 and excluded.percent_agreement.value == pytest.approx(2 / 3)
    assert excluded.n_answers == 8 and excluded.excluded_categories == (4,)
    assert excluded.cohen_kappa.n_items == 3


def test_cohen_needs_exactly_two_raters_and_undefined_values_are_none():
    three = np.array([[0, 0, 1], [1, 1, 1], [0, 1, 0]])
    assert agreement.cohen_kappa(three, 2) is None
    summary = agreement_summary(three, n_categories=2, replicates=200)
    assert summary.cohen_kappa is None and summary.fleiss_kappa.n_items == 3
    one_category = np.zeros((4, 2), dtype=int)
    summary = agreement_summary(one_category, n_categories=3, replicates=200)
    assert summary.percent_agreement.value == 1.0
    assert summary.cohen_kappa.value is None and summary.fleiss_kappa.value is None
    assert summary.krippendorff_alpha.value is None
    empty = agreement_summary(np.array([[0, MISSING], [MISSING, 1]]), n_categories=2, replicates=200)
    assert empty.n_items == 0 and empty.percent_agreement is None and empty.as_dict()["fleiss_kappa"] is None


def test_fleiss_uses_the_items_with_the_most_common_number_of_answers():
    matrix = np.array([[0, 0, 0], [1, 1, MISSING], [0, 1, MISSING], [1, MISSING, 1], [0, MISSING, MISSING]])
    summary = agreement_summary(matrix, n_categories=2, replicates=200)
    assert summary.n_items == 4 and summary.fleiss_raters_per_item == 2 and summary.fleiss_kappa.n_items == 3
    assert summary.fleiss_kappa.value == pytest.approx(agreement.fleiss_kappa(matrix[1:4], 2))


def test_ratings_matrix_keeps_first_seen_order_and_holes():
    matrix, items, raters = agreement.ratings_matrix([("a", "x", 1), ("b", "y", 2), ("a", "y", 0)])
    assert items == ["a", "b"] and raters == ["x", "y"]
    assert matrix.tolist() == [[1, 0], [MISSING, 2]]


def test_type_distribution_rejects_not_sure_and_averages_raters():
    # Tasks: one rater "part"; two raters part/no; one rater "not sure" (rejected); raters no/not sure.
    shares, kept, rejected = agreement.type_distribution([[0], [0, 3], [4], [3, 4]], 5, rejected=[4])
    assert (kept, rejected) == (3, 1)
    assert shares.tolist() == pytest.approx([1.5 / 3, 0, 0, 1.5 / 3, 0])
    assert shares.sum() == pytest.approx(1.0)
