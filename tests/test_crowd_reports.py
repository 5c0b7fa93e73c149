"""Crowd study reports (annotation/crowd_reports.py and its pages): ND'18 Table 3 from a small hand-built study
equals hand-computed values; the purity table; aggregated results; pages for researchers only."""

from __future__ import annotations

from datetime import timedelta
from fractions import Fraction

import numpy as np
import pytest
from django.urls import reverse
from django.utils import timezone

from annotation.crowd import aggregation, reports, selectors
from annotation.models import (
    CrowdAssignment,
    CrowdAssignmentState,
    CrowdStudy,
    CrowdTaskKind,
    CrowdWorker,
    Hit,
    HitRole,
    LabelOrigin,
    ValidationRound,
)

HUMAN, DISSECTION, CONTROL = LabelOrigin.HUMAN, LabelOrigin.DISSECTION, LabelOrigin.CONTROL
_counter = iter(range(1, 10_000))


def _token() -> str:
    return f"{next(_counter):016x}"


@pytest.fixture
def layers(db):
    """A network with conv3 (4 units) and conv5 (6 units), each extracted (rows only: no files)."""
    from analysis.models import Dataset, Layer, LayerExtraction, Network, Run, Unit

    run = Run.objects.create(kind="extract", params_hash="x", status="succeeded")
    dataset = Dataset.objects.create(name="world", kind="probe_world", root_dir="/nonexistent")
    network = Network.objects.create(name="net", source="module", mean=[0.5] * 3, std=[0.25] * 3)
    result = {}
    for order, (name, units) in enumerate((("conv3", 4), ("conv5", 6)), start=3):
        layer = Layer.objects.create(network=network, name=name, order=order, units=units, out_height=4, out_width=4)
        for index in range(units):
            Unit.objects.create(layer=layer, index=index)
        extraction = LayerExtraction.objects.create(
            run=run,
            layer=layer,
            dataset=dataset,
            cache_key=name,
            cache_path="-",
            stats_path="-",
            n_images=10,
            map_height=4,
            map_width=4,
            quantile=0.995,
            k_overall=15,
            k_per_class=10,
        )
        result[name] = (layer, extraction)
    return result


def make_study(layers, kind=CrowdTaskKind.VALIDATION, name="validation"):
    study = CrowdStudy.objects.create(name=name, token=_token(), kind=kind, completion_code="C0DE")
    study.extractions.set([extraction for _, extraction in layers.values()])
    return study


def make_worker(study, name, simulated=False):
    return CrowdWorker.objects.create(study=study, adapter="link", external_id=name, code=_token(), simulated=simulated)


def answer(hit, worker, **fields):
    now = timezone.now()
    return CrowdAssignment.objects.create(
        hit=hit,
        worker=worker,
        token=_token(),
        state=fields.pop("state", CrowdAssignmentState.SUBMITTED),
        leased_at=now,
        lease_expires_at=now + timedelta(minutes=15),
        shown_at=now,
        submitted_at=now + timedelta(seconds=5),
        seconds=5.0,
        simulated=worker.simulated,
        **fields,
    )


def validation_hit(
    study,
    layers,
    layer,
    unit,
    origin,
    category,
    votes,
    *,
    role=HitRole.TASK,
    gold_answer="",
    validation_round=ValidationRound.COMPARISON,
):
    """A validation HIT on ``layer``/``unit`` and its votes: ``{worker: "yes"|"no"}``."""
    _, extraction = layers[layer]
    hit = Hit.objects.create(
        study=study,
        token=_token(),
        position=next(_counter),
        kind=CrowdTaskKind.VALIDATION,
        role=role,
        unit=extraction.layer.unit_set.get(index=unit),
        extraction=extraction,
        label=f"label {layer} {unit} {origin}",
        label_origin=origin if role == HitRole.TASK else "",
        validation_round=validation_round if role == HitRole.TASK else "",
        unit_category=category,
        gold_answer=gold_answer,
    )
    for worker, vote in votes.items():
        answer(hit, worker, answer=vote)
    return hit


@pytest.fixture
def table3_study(layers):
    """The hand-built validation study behind the hand-computed Table 3 (see the test's comments)."""
    study = make_study(layers)
    w1, w2, w3 = (make_worker(study, name) for name in ("w1", "w2", "w3"))
    sim = make_worker(study, "simulated-1", simulated=True)
    y, n = "yes", "no"

    def hit(layer, unit, origin, category, votes):
        # A canonical description gets the same votes in the selection round (which decides whether the unit is
        # interpretable) and in the blind comparison round (which measures): the hand-computed values below.
        if origin == HUMAN:
            validation_hit(
                study, layers, layer, unit, origin, category, votes, validation_round=ValidationRound.SELECTION
            )
        return validation_hit(study, layers, layer, unit, origin, category, votes)

    # conv3 (4 units)
    hit("conv3", 0, HUMAN, "color", {w1: y, w2: y, w3: y})
    hit("conv3", 0, DISSECTION, "color", {w1: y, w2: y, w3: n})
    hit("conv3", 0, CONTROL, "color", {w1: n, w2: n, w3: n})
    hit("conv3", 1, HUMAN, "texture", {w1: y, w2: n, w3: n})
    hit("conv3", 1, DISSECTION, "texture", {w1: y, w2: y, w3: y})
    hit("conv3", 2, HUMAN, "color", {w1: y, w2: y, w3: n})
    hit("conv3", 2, DISSECTION, "color", {w1: n, w2: y, w3: n})
    # conv5 (6 units)
    hit("conv5", 0, HUMAN, "object", {w1: y, w2: y})
    hit("conv5", 0, DISSECTION, "object", {w1: y, w2: y, w3: y})
    hit("conv5", 1, HUMAN, "part", {w1: y, w2: y, w3: y})
    hit("conv5", 1, DISSECTION, "part", {w1: n, w2: n, w3: n})
    hit("conv5", 2, HUMAN, "object", {w1: y, w2: n})
    hit("conv5", 2, DISSECTION, "object", {w1: y, w2: y})
    hit("conv5", 4, HUMAN, "object", {w1: y, w2: y, w3: n, sim: n})
    hit("conv5", 4, DISSECTION, "object", {w1: y, w2: n, w3: n})
    hit("conv5", 5, HUMAN, "scene", {w1: y, w2: y, w3: y})
    # Not counted: a rejected answer, a returned lease, a gold item.
    rejected = hit("conv5", 3, HUMAN, "object", {})
    answer(rejected, w1, answer=y, state=CrowdAssignmentState.REJECTED)
    answer(rejected, w2, answer=y, state=CrowdAssignmentState.RETURNED)
    gold = validation_hit(study, layers, "conv5", 3, "", "object", {w1: y, w2: n}, role=HitRole.GOLD, gold_answer=y)
    for assignment in gold.assignments.all():  # as assignment_submit marks gold answers
        assignment.gold_correct = assignment.answer == y
        assignment.save()
    return study


def _cells(table, label):
    return [cell["text"] for cell in next(row for row in table["rows"] if row["label"] == label)["cells"]]


def test_table3_equals_hand_computed_values(table3_study):
    table = reports.nd18_table3(table3_study, simulated="exclude", replicates=200)
    conv3, conv5 = table["layers"]
    # conv3: interpretable = units whose human label got a strict yes majority: 0 (3/3) and 2 (2/3); unit 1 (1/3) not.
    assert (conv3["layer"], conv3["interpretable"], conv3["units"], conv3["units_judged"]) == ("conv3", 2, 4, 3)
    assert conv3["by_category"] == {"color": 2}
    assert conv3["human"]["value"] == pytest.approx(float(Fraction(1) / 2 + Fraction(2, 3) / 2))  # 5/6
    assert conv3["dissection"]["value"] == pytest.approx(0.5)  # (2/3 + 1/3) / 2
    assert conv3["control"]["value"] == 0.0 and conv3["control"]["n_units"] == 1
    # conv5: units 0 (2/2), 1 (3/3), 4 (2/3), 5 (3/3) interpretable; unit 2 is a 1–1 tie; unit 3 has no counted vote.
    assert (conv5["interpretable"], conv5["units"], conv5["units_judged"]) == (4, 6, 5)
    assert conv5["by_category"] == {"object": 2, "part": 1, "scene": 1}
    assert conv5["human"]["value"] == pytest.approx(11 / 12)  # (1 + 1 + 2/3 + 1) / 4
    assert conv5["dissection"]["value"] == pytest.approx(4 / 9)  # (1 + 0 + 1/3) / 3: unit 5 has no dissection HIT
    assert conv5["human_by_category"]["object"]["value"] == pytest.approx(5 / 6)
    assert conv5["dissection_by_category"]["object"]["value"] == pytest.approx(2 / 3)
    assert conv5["dissection_by_category"]["part"]["value"] == 0.0
    assert conv5["dissection_by_category"]["scene"]["value"] is None
    assert conv5["control"]["value"] is None
    # The paper's layout.
    assert table["categories"] == ["color", "part", "object", "scene"]
    assert _cells(table, "Interpretable units") == ["2/4", "4/6"]
    assert _cells(table, "color units") == ["2", "0"]
    assert _cells(table, "object units") == ["0", "2"]
    assert _cells(table, "Human consistency") == ["83%", "92%"]
    assert [row["label"] for row in table["rows"]][:5] == [
        "Interpretable units",
        "color units",
        "part units",
        "object units",
        "scene units",
    ]
    human_rows = [row for row in table["rows"] if row["label"].startswith("on ")][:4]
    assert [row["label"] for row in human_rows] == [
        "on color units",
        "on part units",
        "on object units",
        "on scene units",
    ]
    assert [cell["text"] for cell in human_rows[0]["cells"]] == ["83%", "n/a"]
    assert _cells(table, "Network Dissection") == ["50%", "44%"]
    # Intervals contain the estimate.
    for entry in table["layers"]:
        share = entry["human"]
        assert share["ci"][0] <= share["value"] <= share["ci"][1]


def test_table3_with_simulated_crowd_and_all_units(table3_study):
    # The simulated "no" on conv5 unit 4's human label makes it a 2–2 tie: no longer interpretable.
    conv5 = reports.nd18_table3(table3_study, simulated="include", replicates=0)["layers"][1]
    assert conv5["interpretable"] == 3
    assert conv5["human"]["value"] == 1.0 and conv5["dissection"]["value"] == pytest.approx(0.5)
    only = reports.nd18_table3(table3_study, simulated="only", replicates=0)["layers"][1]
    assert (only["interpretable"], only["units_judged"]) == (0, 1)
    table = reports.nd18_table3(table3_study, interpretable="all", replicates=0)
    conv3 = table["layers"][0]
    assert conv3["interpretable"] == 3 and conv3["by_category"] == {"color": 2, "texture": 1}
    assert conv3["human"]["value"] == pytest.approx(2 / 3) and conv3["dissection"]["value"] == pytest.approx(2 / 3)
    assert table["categories"][:2] == ["color", "texture"]


def test_table3_selection_and_measurement_never_share_a_vote(table3_study, layers):
    """The selection round alone decides which units count; the comparison round alone gives the shares."""
    before = reports.nd18_table3(table3_study, replicates=0)["layers"][0]
    conv3_unit1 = dict(study=table3_study, unit__index=1, unit__layer__name="conv3", label_origin=HUMAN)
    # Turn conv3 unit 1's selection votes to yes: it becomes interpretable, with its comparison share (1/3).
    selection = Hit.objects.get(validation_round=ValidationRound.SELECTION, **conv3_unit1)
    selection.assignments.update(answer="yes")
    after = reports.nd18_table3(table3_study, replicates=0)["layers"][0]
    assert (before["interpretable"], after["interpretable"]) == (2, 3)
    assert after["human"]["value"] == pytest.approx((1 + 2 / 3 + 1 / 3) / 3)
    # Turn its comparison votes to yes as well: the unit set stays, only the share moves.
    Hit.objects.get(validation_round=ValidationRound.COMPARISON, **conv3_unit1).assignments.update(answer="yes")
    measured = reports.nd18_table3(table3_study, replicates=0)["layers"][0]
    assert measured["interpretable"] == 3 and measured["human"]["value"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    table = reports.nd18_table3(table3_study, replicates=0)
    assert table["selection_hits"] == 8 and table["comparison_hits"] == 16


def test_table3_without_a_selection_round_counts_no_unit_as_interpretable(table3_study):
    # A study made before the rounds existed: its human-label HITs have no round and count as comparison.
    Hit.objects.filter(study=table3_study, validation_round=ValidationRound.SELECTION).update(
        validation_round="", label_origin=DISSECTION
    )
    table = reports.nd18_table3(table3_study, replicates=0)
    assert table["selection_votes"] == 0 and [e["interpretable"] for e in table["layers"]] == [0, 0]
    assert table["comparison_hits"] == 24
    assert [
        e["interpretable"] for e in reports.nd18_table3(table3_study, interpretable="all", replicates=0)["layers"]
    ] == [3, 5]


def _simulated_votes(rng, n_units: int, raters: int, p_yes: dict[str, float], *, selection_p: float | None = None):
    """Votes of a simulated crowd on ``n_units`` units of one layer: per unit a selection HIT for the canonical
    description and comparison HITs for the human, dissection and control labels; each rater says yes with the
    origin's probability (``selection_p`` for the selection HIT; default the human label's)."""
    votes = []
    for unit in range(n_units):
        yes = int(rng.binomial(raters, p_yes["human"] if selection_p is None else selection_p))
        votes.append(reports.UnitVotes("L", unit, "object", HUMAN.value, yes, raters, ValidationRound.SELECTION.value))
        for origin in (HUMAN, DISSECTION, CONTROL):
            yes = int(rng.binomial(raters, p_yes[origin.value]))
            votes.append(reports.UnitVotes("L", unit, "object", origin.value, yes, raters))
    return votes


def _standard_error(share) -> float:
    """The bootstrap standard error behind a 95% percentile interval (its half-width / 1.96)."""
    return (share["ci"][1] - share["ci"][0]) / 2 / 1.96


def test_table3_under_a_null_crowd_is_unbiased():
    """ND'18 Table 3 under a crowd that says yes with p = ½ whatever the label (2000 units, 3 raters): human,
    dissection and control all come out near 50%. Each pair's difference is what chance gives (|z| < 3.3 on the
    two intervals, a 0.1% test), and over 20 independent crowds the mean differences vanish (< 0.005) — no
    bias. Choosing the units by the very votes that measure them (the former rule) gives human ≈ 75% vs
    dissection ≈ 50% on the same votes."""
    differences = {("human", "dissection"): [], ("human", "control"): [], ("dissection", "control"): []}
    for seed in range(20):
        rng = np.random.default_rng(2018 + seed)
        votes = _simulated_votes(rng, 2000, 3, {"human": 0.5, "dissection": 0.5, "control": 0.5})
        entry = reports.table3_from_votes(votes, [("L", 2000)], replicates=400 if seed < 3 else 0, seed=seed)["layers"][
            0
        ]
        assert 900 < entry["interpretable"] < 1100  # P(≥ 2 of 3 yes) = ½
        for (a, b), found in differences.items():
            assert abs(entry[a]["value"] - 0.5) < 0.03
            found.append(entry[a]["value"] - entry[b]["value"])
            if seed < 3:
                z = found[-1] / np.hypot(_standard_error(entry[a]), _standard_error(entry[b]))
                assert abs(z) < 3.3, (a, b, z)
        if seed == 0:
            # The biased rule it replaces: the same votes select and measure.
            same = [
                reports.UnitVotes(v.layer, v.unit, v.category, v.origin, v.yes, v.n, ValidationRound.SELECTION.value)
                for v in votes
                if v.origin == HUMAN.value and v.round == ValidationRound.COMPARISON.value
            ]
            biased = reports.table3_from_votes(
                [v for v in votes if v.round != ValidationRound.SELECTION.value] + same, [("L", 2000)], replicates=0
            )["layers"][0]
            assert biased["human"]["value"] > 0.7 > 0.55 > biased["dissection"]["value"]
    for pair, found in differences.items():
        assert abs(float(np.mean(found))) < 0.005, pair


def test_table3_recovers_a_planted_ordering():
    """A crowd that favours good labels: human labels 80% yes, dissection 65%, controls 20% (and canonical
    descriptions validated with the human rate): the table keeps that order, each near its planted rate."""
    rng = np.random.default_rng(7)
    planted = {"human": 0.8, "dissection": 0.65, "control": 0.2}
    entry = reports.table3_from_votes(_simulated_votes(rng, 2000, 3, planted), [("L", 2000)], replicates=200, seed=2)[
        "layers"
    ][0]
    assert entry["human"]["value"] > entry["dissection"]["value"] > entry["control"]["value"]
    for origin, rate in planted.items():
        assert abs(entry[origin]["value"] - rate) < 0.03, origin
    assert entry["human"]["ci"][0] > entry["dissection"]["ci"][1]


def test_table3_from_votes_pure():
    votes = [
        reports.UnitVotes("L", 1, "", HUMAN.value, 2, 3, ValidationRound.SELECTION.value),
        reports.UnitVotes("L", 1, "", HUMAN.value, 2, 3),
        reports.UnitVotes("L", 1, "", DISSECTION.value, 0, 2),
        reports.UnitVotes("L", 2, "scene", HUMAN.value, 0, 0),
    ]
    table = reports.table3_from_votes(votes, [("L", 10), ("M", 5)], replicates=0)
    first, second = table["layers"]
    assert first["interpretable"] == 1 and first["by_category"] == {"": 1} and first["dissection"]["value"] == 0.0
    assert second["interpretable"] == 0 and second["human"] == {"value": None, "ci": None, "n_units": 0}
    assert table["categories"] == [""]
    assert reports.table3_rows(table)[1]["label"] == "no dissection label units"
    with pytest.raises(ValueError):
        reports.table3_from_votes(votes, [("L", 10)], interpretable="some")


def test_aggregation_report(table3_study):
    result = reports.crowd_aggregation(table3_study, simulated="exclude", replicates=200)
    rows = {
        (row["layer"], row["unit"], row["origin_key"]): row
        for row in result["hits"]
        if row["round"] == ValidationRound.COMPARISON
    }
    assert len(rows) == 16 and len(result["hits"]) == 16 + 8
    assert result["n_answers"] == 45 + 22 and result["n_workers"] == 3
    row = rows[("conv3", 1, HUMAN.value)]
    assert (row["majority"], row["n"], row["tied"]) == ("no", 3, False)
    assert row["majority_share"] == pytest.approx(2 / 3)
    tie = rows[("conv5", 2, HUMAN.value)]
    assert tie["tied"] and tie["majority"] == "yes"
    assert all(row["ds"] in ("yes", "no") and 0.5 <= row["ds_confidence"] <= 1.0 for row in result["hits"])
    assert result["hits"][0]["tied"] or result["hits"][0].get("differs")  # disagreements and ties come first
    assert result["dawid_skene"]["gold_used"]
    # Agreement over the task HITs equals statsmodels' Fleiss' κ on the HITs with three answers (a naive reference).
    from statsmodels.stats.inter_rater import fleiss_kappa

    per_hit = {}
    for hit_id, vote in CrowdAssignment.objects.filter(
        hit__study=table3_study, hit__role=HitRole.TASK, state=CrowdAssignmentState.SUBMITTED, worker__simulated=False
    ).values_list("hit_id", "answer"):
        per_hit.setdefault(hit_id, []).append(vote)
    table = np.array([[votes.count("yes"), votes.count("no")] for votes in per_hit.values() if len(votes) == 3])
    assert result["agreement"]["fleiss_kappa"]["value"] == pytest.approx(fleiss_kappa(table))
    assert result["agreement"]["fleiss_raters_per_item"] == 3
    alpha = result["agreement"]["krippendorff_alpha"]
    assert alpha["ci"][0] <= alpha["value"] <= alpha["ci"][1]
    assert [row["origin_key"] for row in result["agreement_by_origin"]] == ["dissection", "human", "control"]
    # Workers: skill from Dawid-Skene, gold accuracy from the gold item, agreement with the majority.
    workers = {row["worker"].external_id: row for row in result["workers"]}
    assert set(workers) == {"w1", "w2", "w3"}
    assert (workers["w1"]["gold_right"], workers["w1"]["gold_total"], workers["w2"]["gold_accuracy"]) == (1, 1, 0.0)
    assert workers["w3"]["gold_total"] == 0
    assert all(0.0 <= row["skill"] <= 1.0 for row in workers.values())
    assert workers["w1"]["task_answers"] == 16 + 8  # w1 voted on every selection-round HIT too
    majority = aggregation.majority_vote(reports.study_answers(table3_study), labels=["yes", "no"])
    w3 = [
        (hit, vote)
        for hit, vote in CrowdAssignment.objects.filter(
            worker__external_id="w3", hit__role=HitRole.TASK, hit__study=table3_study
        ).values_list("hit_id", "answer")
    ]
    expected = sum(vote == majority.at[hit, "label"] for hit, vote in w3) / len(w3)
    assert workers["w3"]["agrees_with_majority"] == pytest.approx(expected)


def test_overlap_decisions_in_report(table3_study):
    table3_study.overlap_rule = "dynamic"
    table3_study.save()
    result = reports.crowd_aggregation(table3_study, replicates=0)
    decisions = {
        (row["layer"], row["unit"], row["origin_key"]): row["overlap"]
        for row in result["hits"]
        if row["round"] == ValidationRound.COMPARISON
    }
    # conv3 unit 1, human: 1 yes 2 no = 0.67 < 0.7 with its 3 planned answers → one more worker.
    extend = decisions[("conv3", 1, HUMAN.value)]
    assert (extend.action, extend.target) == (aggregation.OverlapAction.EXTEND, 4)
    assert decisions[("conv3", 0, HUMAN.value)].action == aggregation.OverlapAction.DONE
    assert decisions[("conv5", 0, HUMAN.value)].action == aggregation.OverlapAction.COLLECT  # 2 of 3
    assert sum(result["overlap"]["counts"].values()) == 16 + 8  # the selection round's HITs too


def test_hit_overlap_decision_reads_live_answers(layers):
    study = make_study(layers)
    study.overlap_rule, study.overlap_settle_after, study.overlap_min_agreement = "dynamic", 2, 0.7
    study.save()
    w1, w2, w3 = (make_worker(study, name) for name in ("w1", "w2", "w3"))
    hit = validation_hit(study, layers, "conv3", 0, HUMAN, "color", {w1: "yes"})
    assert selectors.hit_overlap_decision(hit).action == aggregation.OverlapAction.COLLECT
    answer(hit, w2, answer="yes")
    settled = selectors.hit_overlap_decision(hit)
    assert (settled.action, settled.target, settled.action.closes) == (aggregation.OverlapAction.STOP_EARLY, 2, True)
    split = validation_hit(study, layers, "conv3", 1, HUMAN, "color", {w1: "yes", w2: "no", w3: "no"})
    answer(split, make_worker(study, "w4"), answer="yes", state=CrowdAssignmentState.REJECTED)  # not counted
    decision = selectors.hit_overlap_decision(split)
    assert (decision.action, decision.target, decision.n_answers) == (aggregation.OverlapAction.EXTEND, 4, 3)


def test_simulated_default(layers):
    study = make_study(layers)
    assert reports.simulated_default(study) == "exclude"
    sim = make_worker(study, "simulated-1", simulated=True)
    validation_hit(study, layers, "conv3", 0, HUMAN, "color", {sim: "yes"})
    assert reports.simulated_default(study) == "only"
    validation_hit(study, layers, "conv3", 1, HUMAN, "color", {make_worker(study, "p"): "yes"})
    assert reports.simulated_default(study) == "exclude"


def purity_hit(study, layers, layer, unit, counts, *, shown=10, k=12, source=None):
    _, extraction = layers[layer]
    hit = Hit.objects.create(
        study=study,
        token=_token(),
        position=next(_counter),
        kind=CrowdTaskKind.PURITY,
        unit=extraction.layer.unit_set.get(index=unit),
        extraction=extraction,
        purity_k=k,
        purity_shown=shown,
        source=source or {},
    )
    for worker, count in counts.items():
        answer(hit, worker, count=count)
    return hit


def test_purity_table_hand_computed(layers):
    study = make_study(layers, kind=CrowdTaskKind.PURITY, name="purity")
    w1, w2 = make_worker(study, "w1"), make_worker(study, "w2")
    purity_hit(study, layers, "conv3", 0, {w1: 6, w2: 8})  # 0.7
    purity_hit(study, layers, "conv3", 1, {w1: 2}, shown=4, k=4)  # 0.5
    purity_hit(study, layers, "conv5", 0, {w1: 9, w2: 10}, k=30)  # 0.95
    # Another pattern source in another purity study on the same layers plugs in as its own row.
    graph = make_study(layers, kind=CrowdTaskKind.PURITY, name="graph nodes")
    g1 = make_worker(graph, "g1")
    purity_hit(graph, layers, "conv5", 0, {g1: 10}, source={"pattern_source": "explanatory_graph", "pattern": 7})
    purity_hit(graph, layers, "conv5", 1, {g1: 8}, source={"pattern_source": "explanatory_graph", "pattern": 8})
    table = reports.purity_table(study)
    assert table["layers"] == ["conv3", "conv5"]
    rows = {row["source"]: row for row in table["rows"]}
    assert list(rows) == ["raw_filter_peaks", "explanatory_graph"]
    raw3, raw5 = rows["raw_filter_peaks"]["cells"]
    assert raw3["purity"] == pytest.approx((0.7 + 0.5) / 2) and raw3["patterns"] == 2 and raw3["answers"] == 3
    assert raw5["purity"] == pytest.approx(0.95) and raw5["median_k"] == 30
    graph3, graph5 = rows["explanatory_graph"]["cells"]
    assert graph3["purity"] is None and graph5["purity"] == pytest.approx(0.9) and graph5["patterns"] == 2
    assert rows["explanatory_graph"]["study"] == graph and rows["raw_filter_peaks"]["study"] == study
    # The graph study's page lists its own rows first, then the other study's.
    assert [row["source"] for row in reports.purity_table(graph)["rows"]] == ["explanatory_graph", "raw_filter_peaks"]


def test_purity_exports_say_what_each_hit_showed_and_reproduce_the_table(layers):
    from collections import defaultdict

    from annotation.crowd import exports

    study = make_study(layers, kind=CrowdTaskKind.PURITY, name="purity export")
    w1, w2 = make_worker(study, "w1"), make_worker(study, "w2")
    purity_hit(study, layers, "conv3", 0, {w1: 6, w2: 8})
    purity_hit(study, layers, "conv3", 1, {w1: 2}, shown=4, k=4)
    purity_hit(
        study, layers, "conv5", 0, {w1: 9}, k=30, source={"pattern_source": "explanatory_graph", "pattern": "conv5/0/2"}
    )
    answers = exports.crowd_answer_rows(study)
    assert {(row["unit"], row["pattern_source"], row["pattern"]) for row in answers} == {
        (0, "raw_filter_peaks", "conv3/0"),
        (1, "raw_filter_peaks", "conv3/1"),
        (0, "explanatory_graph", "conv5/0/2"),
    }
    results = exports.crowd_results(study, simulated="include")
    assert [field in exports.CROWD_RESULT_FIELDS for field in ("pattern_source", "pattern", "purity_k")] == [True] * 3
    by_cell = defaultdict(list)  # the purity table's cells, recomputed from the export alone
    for row in results:
        by_cell[(row["pattern_source"], row["layer"])].append(row["mean_count"] / row["purity_shown"])
    table = reports.purity_table(study)
    for row in table["rows"]:
        for layer, cell in zip(table["layers"], row["cells"]):
            values = by_cell.get((row["source"], layer))
            assert (cell["purity"] is None and not values) or cell["purity"] == pytest.approx(np.mean(values))
    text, _, _ = exports.crowd_export_file(study, "results.csv", simulated="include")
    assert "pattern_source,pattern,graph" in text.splitlines()[0] and "explanatory_graph,conv5/0/2" in text


def interval_alpha_by_definition(units):
    """Krippendorff's interval α from its coincidence-matrix definition, pair by pair (a naive reference):
    α = 1 − (n − 1) Σ_u Σ_{i≠j} (x_ui − x_uj)²/(m_u − 1) / Σ_{all value pairs of different units or not} ..."""
    values = [value for answers in units if len(answers) >= 2 for value in answers]
    n = len(values)
    observed = sum(
        sum((a - b) ** 2 for i, a in enumerate(answers) for j, b in enumerate(answers) if i != j) / (len(answers) - 1)
        for answers in units
        if len(answers) >= 2
    )
    expected = sum((a - b) ** 2 for i, a in enumerate(values) for j, b in enumerate(values) if i != j)
    return 1.0 - (n - 1) * observed / expected


def test_purity_agreement_is_interval_krippendorff_alpha(layers, researcher_client):
    """Counts are numbers: near misses (7 vs 8) agree more than far ones (1 vs 8). The report's α is the interval α,
    equal to its definition computed pair by pair, and its bootstrap interval holds it."""
    study = make_study(layers, kind=CrowdTaskKind.PURITY, name="purity-alpha")
    w1, w2, w3 = (make_worker(study, name) for name in ("w1", "w2", "w3"))
    given = [(0, {w1: 7, w2: 8, w3: 7}), (1, {w1: 2, w2: 3}), (2, {w1: 9, w2: 9, w3: 10}), (3, {w1: 1, w2: 8})]
    for unit, counts in given:
        purity_hit(study, layers, "conv3", unit, counts)
    result = reports.crowd_aggregation(study, replicates=200)
    alpha = result["agreement"]["krippendorff_alpha"]
    assert result["agreement"]["krippendorff_alpha_level"] == "interval"
    expected = interval_alpha_by_definition([list(counts.values()) for _, counts in given])
    assert alpha["value"] == pytest.approx(expected)
    assert alpha["ci"][0] <= alpha["value"] <= alpha["ci"][1]
    nominal = aggregation.agreement(reports.study_answers(study), replicates=0).krippendorff_alpha.value
    assert alpha["value"] > nominal + 0.3  # as nominal categories, 7 and 8 disagree as much as 1 and 8
    page = researcher_client.get(reverse("annotation:crowd_report", args=[study.pk])).content.decode()
    assert "Krippendorff&#x27;s α (interval)" in page or "Krippendorff's α (interval)" in page


def test_description_study_report(researcher_client, layers):
    study = make_study(layers, kind=CrowdTaskKind.DESCRIPTION, name="descriptions")
    w1, w2, w3 = (make_worker(study, name) for name in ("w1", "w2", "w3"))
    _, extraction = layers["conv5"]
    phrases = {0: [("Wheels", 3), ("wheel", 2), ("car door", 5)], 1: [("sky", 2), ("grass", 4), ("water", 4)]}
    for unit, given in phrases.items():
        hit = Hit.objects.create(
            study=study,
            token=_token(),
            position=next(_counter),
            kind=CrowdTaskKind.DESCRIPTION,
            unit=extraction.layer.unit_set.get(index=unit),
            extraction=extraction,
        )
        for worker, (text, confidence) in zip((w1, w2, w3), given):
            answer(hit, worker, description=text, confidence=confidence)
    result = reports.crowd_aggregation(study, replicates=50)
    rows = {row["unit"]: row for row in result["hits"]}
    assert (rows[0]["majority"], rows[0]["majority_share"]) == ("wheel", pytest.approx(2 / 3))
    assert rows[0]["canonical"].agreed and rows[0]["canonical"].votes == 2
    assert not rows[1]["canonical"].agreed and rows[1]["canonical"].text == "grass"
    assert rows[0]["ds"] in {"wheel", "car door"}
    page = researcher_client.get(reverse("annotation:crowd_report", args=[study.pk]))
    assert page.status_code == 200 and "Canonical description" in page.content.decode()
    assert "“grass”" in page.content.decode()
    page = researcher_client.get(reverse("annotation:crowd_report_table3", args=[study.pk]))
    assert page.status_code == 200 and "label-validation study" in page.content.decode()


# -- pages -----------------------------------------------------------------------------------------------------------


def test_report_pages_render_for_a_researcher(researcher_client, table3_study, layers):
    page = researcher_client.get(reverse("annotation:crowd_report", args=[table3_study.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="hit-results"' in html and "Dawid-Skene" in html and "Fleiss" in html and "<svg" in html
    assert 'data-worker="w1"' in html and "simulated-1" not in html
    assert "accuracy on gold items" in html  # the skill-vs-gold chart (w1 and w2 answered the gold item)
    page = researcher_client.get(reverse("annotation:crowd_report_table3", args=[table3_study.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="table3-grid"' in html and "2/4" in html and "4/6" in html and "92%" in html and "44%" in html
    assert html.count("<svg") >= 2 and 'role="img"' in html
    page = researcher_client.get(
        reverse("annotation:crowd_report_table3", args=[table3_study.pk]),
        {"simulated": "include", "interpretable": "all"},
    )
    assert page.status_code == 200 and "The simulated crowd is included" in page.content.decode()
    purity = make_study(layers, kind=CrowdTaskKind.PURITY, name="purity")
    purity_hit(purity, layers, "conv3", 0, {make_worker(purity, "w9"): 5})
    page = researcher_client.get(reverse("annotation:crowd_report_purity", args=[purity.pk]))
    assert page.status_code == 200
    assert 'data-source="raw_filter_peaks"' in page.content.decode() and "0.500" in page.content.decode()
    page = researcher_client.get(reverse("annotation:crowd_report", args=[purity.pk]))
    assert page.status_code == 200 and "Mean count" in page.content.decode()


def test_report_pages_are_for_researchers_only(client, make_user, table3_study):
    urls = [
        reverse(name, args=[table3_study.pk])
        for name in ("annotation:crowd_report", "annotation:crowd_report_table3", "annotation:crowd_report_purity")
    ]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 302 and "login" in response["Location"]
    for number, role in enumerate(("expert", "crowd")):
        client.force_login(make_user(f"someone{number}", role))
        for url in urls:
            assert client.get(url).status_code == 403


# -- end to end: the demo's crowd studies (real services, simulated crowd) ------------------------------------------


def test_reports_of_the_demo_crowd_studies(tiny_layer_with_grids, researcher_client):
    """The demo's description and validation studies on a tiny probe world: Table 3 equals a naive recount of the
    assignments, and every report page renders (showing the simulated crowd, the only one that answered)."""
    from analysis.services.dissection import dissection_run_start
    from annotation.crowd import demo as crowd_demo

    run = dissection_run_start(network="seeded", dataset="tiny", layer="conv5", inline=True)
    assert run.status == "succeeded", run.error
    crowd_demo.demo_crowd_studies_ensure(network="seeded", dataset="tiny", layers=("conv5",), units=range(4))
    study = CrowdStudy.objects.get(name=crowd_demo.DEMO_VALIDATION_STUDY)
    assert reports.simulated_default(study) == "only"
    table = reports.nd18_table3(study, simulated="only", replicates=0)
    (conv5,) = table["layers"]
    # Naive recount (ND'18 §3.1's two rounds): a unit is interpretable when its selection-round HIT (the human
    # canonical description) has a yes majority; the table's shares come from the comparison round only. A HIT
    # whose label was both the human description and the dissection label counts for both origins.
    shares: dict[tuple[int, str], list[int]] = {}
    selection: dict[int, list[int]] = {}
    for unit, origin, source, vote, round_ in CrowdAssignment.objects.filter(
        hit__study=study, hit__role=HitRole.TASK, state__in=["submitted", "approved"]
    ).values_list("hit__unit__index", "hit__label_origin", "hit__source", "answer", "hit__validation_round"):
        if round_ == ValidationRound.SELECTION:
            selection.setdefault(unit, []).append(vote == "yes")
            continue
        for each in [origin, *(source or {}).get("also_origins", [])]:
            shares.setdefault((unit, each), []).append(vote == "yes")
    assert selection, "the demo's validation study runs a selection round"
    interpretable = [unit for unit, votes in selection.items() if 2 * sum(votes) > len(votes)]
    assert conv5["interpretable"] == len(interpretable)
    assert conv5["units"] == study.extractions.get().layer.units and conv5["units_judged"] == 4
    human = [np.mean(shares[(unit, HUMAN)]) for unit in interpretable if (unit, HUMAN) in shares]
    dissection = [np.mean(shares[(unit, DISSECTION)]) for unit in interpretable if (unit, DISSECTION) in shares]
    assert conv5["human"]["value"] == pytest.approx(np.mean(human) if human else None)
    assert conv5["dissection"]["value"] == pytest.approx(np.mean(dissection) if dissection else None)
    assert sum(conv5["by_category"].values()) == conv5["interpretable"]
    for name in ("annotation:crowd_report", "annotation:crowd_report_table3"):
        page = researcher_client.get(reverse(name, args=[study.pk]))
        assert page.status_code == 200 and "The simulated crowd is included" in page.content.decode()
    description = CrowdStudy.objects.get(name=crowd_demo.DEMO_DESCRIPTION_STUDY)
    page = researcher_client.get(reverse("annotation:crowd_report", args=[description.pk]))
    assert page.status_code == 200 and "Canonical description" in page.content.decode()


def test_a_graph_purity_study_names_the_graph_category_its_patterns_were_drawn_on(layers, researcher_client):
    """Per-category graphs: a purity study over one category's graph says which graph (run and category) and which
    inputs its rows were drawn on, in the report and in both exports."""
    from analysis.models import ExplanatoryGraph, Run
    from annotation.crowd import exports

    _, extraction = layers["conv5"]
    run = Run.objects.create(kind="explanatory_graph", params={}, params_hash="per-category", status="succeeded")
    graphs = {
        category: ExplanatoryGraph.objects.create(
            run=run,
            network=extraction.layer.network,
            dataset=extraction.dataset,
            category=category,
            inputs="object_crops",
            layers=["conv5"],
        )
        for category in ("bird", "car")
    }
    study = make_study(layers, kind=CrowdTaskKind.PURITY, name="car graph")
    w1 = make_worker(study, "w1")
    car = graphs["car"].pk
    purity_hit(
        study,
        layers,
        "conv5",
        0,
        {w1: 7},
        source={"pattern_source": "explanatory_graph", "pattern": "conv5/0/1", "graph": car},
    )
    purity_hit(
        study,
        layers,
        "conv5",
        0,
        {w1: 3},
        source={"pattern_source": "raw_filter_peaks", "pattern": "conv5/0", "graph": car},
    )
    rows = reports.purity_table(study)["rows"]
    assert [row["source"] for row in rows] == ["raw_filter_peaks", "explanatory_graph"]
    assert {row["inputs"] for row in rows} == {f"graph of car, object crops (run {run.pk})"}
    page = researcher_client.get(reverse("annotation:crowd_report_purity", args=[study.pk])).content.decode()
    assert f"on the graph of car, object crops (run {run.pk})" in page
    for row in exports.crowd_answer_rows(study) + exports.crowd_results(study, simulated="include"):
        assert (row["graph"], row["graph_category"]) == (run.pk, "car")
    unrelated = make_study(layers, kind=CrowdTaskKind.PURITY, name="whole images")
    purity_hit(unrelated, layers, "conv5", 1, {make_worker(unrelated, "w2"): 5})
    assert [row["inputs"] for row in reports.purity_table(unrelated)["rows"] if row["study"] == unrelated] == [None]
