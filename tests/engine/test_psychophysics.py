"""Forced-choice maths checked against statsmodels and scipy on seeded data, trial plans' invariants, and the
machine proxy observer on planted embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from analysis.engine.machine_proxy import penultimate_embeddings, proxy_correct, proxy_observer
from analysis.engine.psychophysics import (
    binomial_test_p,
    clopper_pearson,
    paired_condition_test,
    plan_unit_trials,
    rank_correlation,
    ranked_images,
)
from tests.devices import cpu_and_cuda


def test_clopper_pearson_matches_statsmodels_beta_interval():
    rng = np.random.default_rng(3)
    n = rng.integers(1, 60, size=50)
    k = rng.integers(0, n + 1)
    k[:3], n[:3] = [0, 5, 7], [5, 5, 9]  # both ends
    low, high = clopper_pearson(k, n)
    for i in range(n.size):
        ref_low, ref_high = proportion_confint(int(k[i]), int(n[i]), alpha=0.05, method="beta")
        assert low[i] == pytest.approx(ref_low, abs=1e-10)
        assert high[i] == pytest.approx(ref_high, abs=1e-10)
    assert np.isnan(clopper_pearson([0], [0])[0][0])
    assert binomial_test_p(9, 10) == pytest.approx(stats.binomtest(9, 10, 0.5).pvalue)


def test_paired_tests_match_scipy_and_drop_missing_pairs():
    rng = np.random.default_rng(4)
    a = rng.uniform(0.5, 1.0, 20)
    b = np.clip(a - rng.normal(0.1, 0.08, 20), 0, 1)
    a_missing = a.copy()
    a_missing[3] = np.nan
    result = paired_condition_test(a_missing, b)
    keep = np.arange(20) != 3
    assert result.n == 19
    assert result.mean_difference == pytest.approx(float((a[keep] - b[keep]).mean()))
    assert result.wilcoxon_p == pytest.approx(stats.wilcoxon(a[keep], b[keep]).pvalue)
    assert result.wilcoxon_statistic == pytest.approx(stats.wilcoxon(a[keep], b[keep]).statistic)
    assert result.t_p == pytest.approx(stats.ttest_rel(a[keep], b[keep]).pvalue)
    same = paired_condition_test(a, a)
    assert same.wilcoxon_p is None and same.t_p is None and same.mean_difference == 0


def test_rank_correlation_matches_spearman():
    rng = np.random.default_rng(5)
    x = rng.normal(size=30)
    y = x + rng.normal(scale=0.5, size=30)
    y[0] = np.nan
    rho, p, n = rank_correlation(x, y)
    reference = stats.spearmanr(x[1:], y[1:])
    assert n == 29 and rho == pytest.approx(reference.statistic) and p == pytest.approx(reference.pvalue)
    assert rank_correlation([1, 2], [3, 4])[0] is None


def test_trial_plan_keeps_queries_out_of_the_references():
    rng = np.random.default_rng(6)
    scores = rng.normal(size=80)
    plan = plan_unit_trials(
        scores,
        rng=np.random.default_rng(1),
        n_trials=5,
        n_catch=2,
        reference_count=9,
        query_ranks=(10, 19),
        non_extremal_ranks=(20, 35),
    )
    order = ranked_images(scores)
    assert list(plan.top) == list(order[:9]) and list(plan.bottom) == list(order[::-1][:9])
    assert scores[plan.top].min() > scores[np.setdiff1d(np.arange(80), plan.top)].max()
    references = set(plan.top) | set(plan.bottom) | set(plan.top_non_extremal) | set(plan.bottom_non_extremal)
    real = ~plan.catch
    assert plan.catch.sum() == 2 and real.sum() == 5
    assert not references & set(plan.queries[real].ravel().tolist())
    assert set(plan.queries[plan.catch, 0]) <= set(plan.top) and set(plan.queries[plan.catch, 1]) <= set(plan.bottom)
    assert (scores[plan.queries[:, 0]] > scores[plan.queries[:, 1]]).all()
    assert len(set(plan.queries[real, 0])) == 5  # without replacement
    for (strong, weak), (rank_strong, rank_weak) in zip(plan.queries, plan.query_ranks):
        assert order[rank_strong - 1] == strong and order[::-1][rank_weak - 1] == weak
    again = plan_unit_trials(scores, rng=np.random.default_rng(1), n_trials=5, n_catch=2, non_extremal_ranks=(20, 35))
    assert (again.queries == plan.queries).all()
    with pytest.raises(ValueError):
        plan_unit_trials(scores[:30], rng=rng, n_trials=2)  # 2 × 19 ranks > 30 images
    with pytest.raises(ValueError):
        plan_unit_trials(scores, rng=rng, n_trials=11)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_proxy_observer_reads_a_planted_direction_and_matches_a_loop(device):
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(40, 8, generator=generator)
    embeddings[:10, 0] += 6.0  # images 0-9 share a feature: the "unit" prefers them
    embeddings[30:, 0] -= 6.0  # and 30-39 lack it
    top = torch.tensor([[0, 1, 2], [3, 4, 5]])
    bottom = torch.tensor([[30, 31, 32], [33, 34, 35]])
    query_a = torch.tensor([6, 20])
    query_b = torch.tensor([36, 7])
    margins = proxy_observer(
        embeddings.to(device), top.to(device), bottom.to(device), query_a.to(device), query_b.to(device)
    )
    assert margins.device.type == device
    for t in range(2):
        mt, mb = embeddings[top[t]].mean(0), embeddings[bottom[t]].mean(0)

        def ev(q):
            e = embeddings[q]
            return float(torch.cosine_similarity(e, mt, 0) - torch.cosine_similarity(e, mb, 0))

        assert float(margins[t]) == pytest.approx(ev(query_a[t]) - ev(query_b[t]), abs=1e-5)
    correct = proxy_correct(margins.cpu(), torch.tensor([True, False]))
    assert correct.tolist() == [1.0, 1.0]
    assert proxy_correct(torch.zeros(1), torch.tensor([True])).tolist() == [0.5]


def test_penultimate_embeddings_are_the_classifier_input_or_a_named_pooled_layer():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(1),
        torch.nn.Linear(16, 5),
    )
    inputs = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    features = penultimate_embeddings(model, inputs)
    assert torch.allclose(features, model[:4](inputs))
    pooled = penultimate_embeddings(model, inputs, layer="1")
    assert torch.allclose(pooled, model[:2](inputs).mean(dim=(2, 3)))
