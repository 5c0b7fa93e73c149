"""The aggregation library (annotation/aggregation.py): pure functions, no database."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from annotation.crowd import aggregation as ag
from annotation.crowd.aggregation import OverlapAction, OverlapRules

PLANTED = {
    "w0": 0.97,
    "w1": 0.93,
    "w2": 0.88,
    "w3": 0.80,
    "w4": 0.72,
    "w5": 0.65,
    "w6": 0.58,
    "w7": 0.52,
    "w8": 0.50,
    "w9": 0.55,
}
"""Planted worker reliabilities: three good workers, the rest close to coin flips (so majority vote suffers)."""


def simulate(seed: int, *, n_tasks: int = 150, per_task: int = 5, workers=PLANTED):
    """Yes/no tasks (60% yes); each answered by ``per_task`` distinct random workers, each right with their
    planted probability (symmetric noise)."""
    rng = np.random.default_rng(seed)
    names = list(workers)
    truth = rng.choice(["yes", "no"], size=n_tasks, p=[0.6, 0.4])
    rows = []
    for task in range(n_tasks):
        for worker in rng.choice(len(names), size=per_task, replace=False):
            right = rng.random() < workers[names[worker]]
            answer = truth[task] if right else ("no" if truth[task] == "yes" else "yes")
            rows.append((f"t{task}", names[worker], answer))
    return ag.answers_frame(rows), pd.Series(truth, index=[f"t{task}" for task in range(n_tasks)])


@pytest.fixture(scope="module")
def simulated():
    answers, truth = simulate(2)
    return answers, truth, ag.dawid_skene(answers), ag.majority_vote(answers, labels=["yes", "no"])


# -- Dawid-Skene vs majority vote ------------------------------------------------------------------------------


def test_dawid_skene_labels_beat_majority_vote(simulated):
    _answers, truth, ds, mv = simulated
    assert set(ds.labels.index) == set(mv.index) == set(truth.index)
    mv_accuracy = float((mv["label"] == truth[mv.index]).mean())
    ds_accuracy = float((ds.labels == truth[ds.labels.index]).mean())
    assert ds_accuracy >= 0.88
    assert ds_accuracy >= mv_accuracy + 0.04, (ds_accuracy, mv_accuracy)


def test_dawid_skene_recovers_planted_worker_reliabilities(simulated):
    answers, _truth, ds, mv = simulated
    planted = pd.Series(PLANTED)
    estimated = ds.skills[planted.index]
    assert spearmanr(estimated, planted).statistic >= 0.9
    assert float((estimated - planted).abs().mean()) < 0.06
    # Majority vote's skill estimate (each worker's agreement with the majority label) is further off.
    joined = answers.join(mv["label"].rename("majority"), on="task")
    mv_skill = (joined["label"] == joined["majority"]).groupby(joined["worker"]).mean()[planted.index]
    assert float((estimated - planted).abs().mean()) < float((mv_skill - planted).abs().mean())
    # The top three workers are found as the top three.
    assert set(estimated.nlargest(3).index) == {"w0", "w1", "w2"}


def test_dawid_skene_outputs_are_consistent(simulated):
    answers, _truth, ds, _mv = simulated
    assert np.allclose(ds.probas.sum(axis=1), 1.0)
    assert (ds.confidence >= 0.5).all() and np.allclose(ds.confidence, ds.probas.max(axis=1))
    assert abs(float(ds.priors.sum()) - 1.0) < 1e-9 and abs(float(ds.priors["yes"]) - 0.6) < 0.1
    # Each worker's confusion columns (true label) sum to 1 over the answers they gave.
    for worker, block in ds.confusion.groupby(level="worker"):
        assert np.allclose(block.sum(axis=0), 1.0), worker
    assert ds.iterations >= 1
    # Deterministic: the same answers give the same estimates.
    again = ag.dawid_skene(answers)
    pd.testing.assert_series_equal(again.skills, ds.skills)
    pd.testing.assert_series_equal(again.labels, ds.labels)


def test_dawid_skene_with_one_label_and_with_gold():
    ds = ag.dawid_skene(ag.answers_frame([("t1", "a", "yes"), ("t1", "b", "yes"), ("t2", "a", "yes")]))
    assert ds.labels.to_dict() == {"t1": "yes", "t2": "yes"}
    assert ds.skills.to_dict() == {"a": 1.0, "b": 1.0}
    # Gold fixes its task's posterior: worker b contradicts the gold answer on t3, so on the 1–1 split of
    # t1 the model follows worker a, whose answer matched gold.
    rows = [("t1", "a", "yes"), ("t1", "b", "no"), ("t3", "a", "yes"), ("t3", "b", "no")]
    with_gold = ag.dawid_skene(ag.answers_frame(rows), gold={"t3": "yes", "elsewhere": "no"})
    assert with_gold.labels["t3"] == "yes" and with_gold.labels["t1"] == "yes"
    assert with_gold.skills["a"] > 0.9 > 0.1 > with_gold.skills["b"]
    empty = ag.dawid_skene(ag.answers_frame([]))
    assert empty.labels.empty and empty.skills.empty


# -- majority vote ---------------------------------------------------------------------------------------------


def test_majority_vote_hand_cases():
    rows = [
        ("t1", "a", "yes"),
        ("t1", "b", "yes"),
        ("t1", "c", "no"),
        ("t2", "a", "no"),
        ("t2", "b", "yes"),
        ("t3", "c", "no"),
        ("t4", "a", "red"),
        ("t4", "b", "blue"),
        ("t4", "c", "blue"),
        ("t4", "d", "green"),
    ]
    mv = ag.majority_vote(ag.answers_frame(rows), labels=["yes", "no"])
    assert list(mv.index) == ["t1", "t2", "t3", "t4"]
    assert mv.loc["t1"].to_dict() == {
        "label": "yes",
        "votes": 2,
        "n_answers": 3,
        "share": pytest.approx(2 / 3),
        "tied": False,
    }
    assert (mv.at["t2", "label"], mv.at["t2", "tied"], mv.at["t2", "share"]) == ("yes", True, 0.5)
    assert (mv.at["t3", "label"], mv.at["t3", "votes"], mv.at["t3", "share"]) == ("no", 1, 1.0)
    assert (mv.at["t4", "label"], mv.at["t4", "votes"], mv.at["t4", "tied"]) == ("blue", 2, False)
    # Ties follow the label order given.
    assert ag.majority_vote(ag.answers_frame(rows), labels=["no", "yes"]).at["t2", "label"] == "no"
    # Without an order, by text: "no" < "yes".
    assert ag.majority_vote(ag.answers_frame(rows)).at["t2", "label"] == "no"


def test_answers_frame_rejects_duplicates_and_drops_missing():
    with pytest.raises(ValueError, match="more than once"):
        ag.answers_frame([("t1", "a", "yes"), ("t1", "a", "no")])
    frame = ag.answers_frame([("t1", "a", "yes"), ("t1", "b", None)])
    assert len(frame) == 1
    with pytest.raises(ValueError, match="columns"):
        ag.answers_frame(pd.DataFrame({"task": [1], "label": [1]}))


# -- agreement -------------------------------------------------------------------------------------------------


def test_agreement_hand_computed():
    # t1 yyy, t2 yyn, t3 nnn, t4 ynn: P̄ = 2/3, p_yes = 1/2 → Fleiss κ = (2/3 − 1/2) / (1/2) = 1/3.
    # α nominal: n = 12, n_c = 6, 6, Σ o_cc = 3 + 1 + 3 + 1 = 8 → 1 − 11·(12 − 8) / (144 − 72) = 7/18.
    answers = ag.answers_frame(
        [
            ("t1", "a", "yes"),
            ("t1", "b", "yes"),
            ("t1", "c", "yes"),
            ("t2", "a", "yes"),
            ("t2", "b", "yes"),
            ("t2", "d", "no"),
            ("t3", "b", "no"),
            ("t3", "c", "no"),
            ("t3", "d", "no"),
            ("t4", "a", "yes"),
            ("t4", "c", "no"),
            ("t4", "d", "no"),
        ]
    )
    summary = ag.agreement(answers, labels=["yes", "no"], replicates=200)
    assert summary.fleiss_kappa.value == pytest.approx(1 / 3)
    assert summary.krippendorff_alpha.value == pytest.approx(7 / 18)
    assert summary.n_items == 4 and summary.n_raters == 4 and summary.n_answers == 12
    # A label nobody gave, listed in ``labels``, changes nothing in these statistics' values.
    assert ag.agreement(answers, labels=["yes", "no", "unsure"], replicates=10).fleiss_kappa.value == pytest.approx(
        1 / 3
    )
    empty = ag.agreement(ag.answers_frame([]))
    assert empty.fleiss_kappa is None and empty.n_items == 0


def test_bootstrap_intervals_contain_estimate_and_are_seeded():
    answers, _ = simulate(7, n_tasks=40, per_task=3)
    first = ag.agreement(answers, replicates=400, seed=3)
    again = ag.agreement(answers, replicates=400, seed=3)
    other = ag.agreement(answers, replicates=400, seed=4)
    for name in ("fleiss_kappa", "krippendorff_alpha"):
        estimate = getattr(first, name)
        assert estimate.ci_low <= estimate.value <= estimate.ci_high
        assert estimate.ci_low < estimate.ci_high
        assert estimate.n_items == 40 and estimate.replicates > 350
        assert getattr(again, name) == estimate
        assert (getattr(other, name).ci_low, getattr(other, name).ci_high) != (estimate.ci_low, estimate.ci_high)


# -- dynamic overlap -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "counts, planned, action, target",
    [
        ({"yes": 2}, 3, OverlapAction.COLLECT, 3),  # below min_raters (3)
        ({"yes": 3}, 5, OverlapAction.STOP_EARLY, 3),  # unanimous at 3 of 5: settled early
        ({"yes": 2, "no": 1}, 5, OverlapAction.COLLECT, 5),  # split before the planned count
        ({"yes": 3}, 3, OverlapAction.DONE, 3),
        ({"yes": 2, "no": 1}, 3, OverlapAction.EXTEND, 4),  # 0.67 < 0.7: one more rater
        ({"yes": 3, "no": 1}, 4, OverlapAction.DONE, 4),  # 0.75 settles
        ({"yes": 2, "no": 2}, 4, OverlapAction.EXTEND, 5),
        ({"yes": 3, "no": 2}, 5, OverlapAction.EXHAUSTED, 5),  # at max_raters, still low
        ({}, 3, OverlapAction.COLLECT, 3),
        ({"yes": 1}, 9, OverlapAction.COLLECT, 5),  # a planned count above the cap is capped
        ({"yes": 1}, 1, OverlapAction.COLLECT, 3),  # ... and one below min_raters raised
    ],
)
def test_overlap_default_rules(counts, planned, action, target):
    decision = ag.overlap_decision("h", counts, planned)
    assert (decision.action, decision.target) == (action, target)
    assert decision.n_answers == sum(counts.values())
    assert decision.action.closes == (action in (OverlapAction.STOP_EARLY, OverlapAction.DONE, OverlapAction.EXHAUSTED))


def test_overlap_custom_rules_and_many_tasks():
    rules = OverlapRules(min_raters=3, stop_share=0.6, extend_below=0.9, add=2, max_raters=8)
    assert ag.overlap_decision("h", {"yes": 2, "no": 1}, 5, rules).action == OverlapAction.STOP_EARLY
    assert ag.overlap_decision("h", {"yes": 2}, 5, rules).action == OverlapAction.COLLECT  # min_raters 3
    decision = ag.overlap_decision("h", {"a": 2, "b": 2, "c": 1}, 5, rules)
    assert (decision.action, decision.target, decision.leading_label, decision.leading_share) == (
        OverlapAction.EXTEND,
        7,
        None,
        0.4,
    )
    two = OverlapRules(min_raters=2)
    answers = ag.answers_frame(
        [("t1", "a", "yes"), ("t1", "b", "yes"), ("t2", "a", "yes"), ("t2", "b", "no"), ("t2", "c", "no")]
    )
    decisions = ag.overlap_decisions(answers, {"t1": 3, "t2": 3}, two, tasks=["t3"])
    assert {task: (d.action, d.target) for task, d in decisions.items()} == {
        "t1": (OverlapAction.STOP_EARLY, 2),
        "t2": (OverlapAction.EXTEND, 4),
        "t3": (OverlapAction.COLLECT, 2),
    }
    assert decisions["t2"].leading_label == "no"
    assert ag.overlap_decisions(answers, 3, two)["t1"].action == OverlapAction.STOP_EARLY


def test_overlap_rules_from_study_and_validation():
    class Study:  # a CrowdStudy's three fields
        overlap_settle_after, overlap_min_agreement, overlap_max_assignments = 2, 0.8, 6

    assert OverlapRules.from_study(Study) == OverlapRules(min_raters=2, extend_below=0.8, max_raters=6)
    Study.overlap_max_assignments = 1
    assert OverlapRules.from_study(Study).max_raters == 2
    Study.assignments_per_hit = 7  # a planned N above the cap raises the cap
    assert OverlapRules.from_study(Study).max_raters == 7
    with pytest.raises(ValueError):
        OverlapRules(min_raters=4, max_raters=3)
    with pytest.raises(ValueError):
        OverlapRules(stop_share=0)
    with pytest.raises(ValueError):
        OverlapRules(add=0)


# -- purity ----------------------------------------------------------------------------------------------------


def test_mean_purity():
    value, patterns = ag.mean_purity([("u1", 3, 4), ("u1", 4, 4), ("u2", 1, 5)])
    assert patterns == 2 and value == pytest.approx(((3 / 4 + 4 / 4) / 2 + 1 / 5) / 2)
    assert ag.mean_purity([]) == (None, 0)
    with pytest.raises(ValueError):
        ag.mean_purity([("u1", 5, 4)])


def test_crowd_kit_imports_without_network_and_runs_on_pinned_scikit_learn():
    """crowd-kit pulls nltk and transformers: importing its aggregation must not download anything, and the pinned
    scikit-learn (< 1.8) must let its sklearn-based aggregators run (REFERENCE.md)."""
    import subprocess
    import sys

    script = (
        "import socket\n"
        "def refuse(*args, **kwargs):\n"
        "    raise RuntimeError('network access at import')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "import sklearn, pandas as pd\n"
        "assert tuple(int(p) for p in sklearn.__version__.split('.')[:2]) < (1, 8), sklearn.__version__\n"
        "from crowdkit.aggregation import DawidSkene, Wawa\n"
        "import sys\n"
        "assert 'transformers' not in sys.modules\n"
        "frame = pd.DataFrame({'task': [1, 1, 2], 'worker': ['a', 'b', 'a'], 'label': ['y', 'y', 'n']})\n"
        "print(Wawa().fit_predict(frame).to_dict())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "{1: 'y', 2: 'n'}" in done.stdout
