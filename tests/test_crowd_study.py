"""Crowd studies against the database: creation (labels, controls, shuffling), the next-HIT claim, leases,
submissions, gold feedback and blocking, qualification, review and bonuses, canonical descriptions, purity K,
careless signals.

``build_crowd_world`` makes tiny layers with rendered (synthetic) top-15 grids and a complete dissection in a
few milliseconds; the other crowd test modules import it.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone
from PIL import Image

from analysis.models import (
    Concept,
    Dataset,
    DissectionBaseline,
    ExemplarKind,
    ExemplarSet,
    Layer,
    LayerDissection,
    LayerExtraction,
    Network,
    Run,
    RunStatus,
    Unit,
    UnitDissection,
)
from analysis.services.grids import store_grid
from annotation import naming
from annotation.crowd import hits as crowd_hits
from annotation.crowd import selectors as crowd_selectors
from annotation.crowd import services
from annotation.crowd import truth as crowd_truth
from annotation.crowd.services import CrowdInputError
from annotation.models import CrowdAdapter, CrowdAssignment, CrowdAssignmentState, CrowdTaskKind, HitRole, LabelOrigin

pytestmark = pytest.mark.django_db
CONCEPTS = [
    ("car", "object"),
    ("wheel", "part"),
    ("wing", "part"),
    ("grass", "material"),
    ("red-c", "color"),
    ("striped", "texture"),
    ("street-s", "scene"),
]


def build_crowd_world(
    *, name: str = "cw", units: int = 4, layers=("conv5",), labelled: int | None = None, tile: int = 12
) -> list[LayerExtraction]:
    """Layers with ``units`` units each, an extraction per layer with a rendered top-15 grid per unit (distinct
    flat colours), and a complete dissection labelling the first ``labelled`` units (default all) with concepts
    in turn. Returns the extractions."""
    dataset = Dataset.objects.create(name=f"{name}-data", kind="probe_world", root_dir="/nonexistent")
    concepts = [
        Concept.objects.create(dataset=dataset, number=number, name=concept, category=category, image_count=50)
        for number, (concept, category) in enumerate(CONCEPTS, 1)
    ]
    network = Network.objects.create(name=f"{name}-net", source="module", input_height=64, input_width=64)
    extractions = []
    colour = 0
    for order, layer_name in enumerate(layers, start=3):
        run = Run.objects.create(
            kind="extract",
            params={"name": name, "layer": layer_name},
            params_hash=f"{name}{layer_name}",
            status=RunStatus.SUCCEEDED,
        )
        layer = Layer.objects.create(
            network=network, name=layer_name, order=order, units=units, out_height=4, out_width=4
        )
        extraction = LayerExtraction.objects.create(
            run=run,
            layer=layer,
            dataset=dataset,
            cache_key=f"{name}{layer_name}",
            cache_path="",
            stats_path="",
            n_images=30,
            map_height=4,
            map_width=4,
            quantile=0.005,
            k_overall=15,
            k_per_class=10,
            class_names=[],
        )
        dissection = LayerDissection.objects.create(
            run=run,
            layer=layer,
            dataset=dataset,
            extraction=extraction,
            baseline=DissectionBaseline.NONE,
            quantile=0.005,
            iou_threshold=0.04,
            directory="/nonexistent",
            complete=True,
        )
        for index in range(units):
            unit = Unit.objects.create(layer=layer, index=index)
            colour += 1
            picture = Image.new("RGB", (5 * tile + 12, 3 * tile + 8), ((colour * 37) % 256, (colour * 91) % 256, 77))
            ExemplarSet.objects.create(
                extraction=extraction,
                unit=unit,
                kind=ExemplarKind.TOP_OVERALL,
                image_indices=list(range(15)),
                scores=[1.0] * 15,
                peaks=[[1, 1]] * 15,
                grid=store_grid(picture, style=ExemplarKind.TOP_OVERALL),
            )
            if labelled is None or index < labelled:
                concept = concepts[index % len(concepts)]
                UnitDissection.objects.create(
                    dissection=dissection,
                    unit=unit,
                    concept=concept,
                    iou=0.1 + index / 100,
                    is_detector=True,
                    threshold=1.0,
                )
        extractions.append(extraction)
    return extractions


def validation_study(name="v", *, units=4, layers=("conv5",), tile=12, **kwargs):
    extractions = build_crowd_world(name=name, units=units, layers=layers, tile=tile)
    params = dict(kind=CrowdTaskKind.VALIDATION, gold_count=0, gold_rate=0.0, qualification_required=False)
    params.update(kwargs)
    study = crowd_hits.crowd_study_create(name=name, extractions=extractions, **params)
    return study


def enter(study, number: int, adapter=CrowdAdapter.LINK):
    worker, _ = services.worker_enter(study=study, adapter=adapter, external_id=f"w{number}")
    return worker


def answer_everything(worker, answer="yes") -> list[CrowdAssignment]:
    done = []
    while (assignment := services.hit_next_for_worker(worker=worker)) is not None:
        services.assignment_submit(assignment=assignment, answer=answer)
        done.append(assignment)
    return done


# -- creation ------------------------------------------------------------------------------------------------


def test_validation_study_has_dissection_and_control_labels_and_hides_them_in_a_random_order():
    study = validation_study(units=4, layers=("conv4", "conv5"))
    hits = list(study.hits.order_by("position"))
    assert len(hits) == 2 * 4 * 2  # per unit: its dissection label and a control (no description study yet)
    assert {hit.label_origin for hit in hits} == {LabelOrigin.DISSECTION, LabelOrigin.CONTROL}
    for hit in hits:
        assert hit.role == HitRole.TASK and hit.max_assignments == 3 and hit.grid_id is not None
        assert len(hit.token) == 16 and int(hit.token, 16) >= 0  # hex: cannot spell an origin
    by_unit = {}
    for hit in hits:
        by_unit.setdefault(hit.unit_id, {})[hit.label_origin] = hit
    for unit_hits in by_unit.values():
        dissection, control = unit_hits[LabelOrigin.DISSECTION], unit_hits[LabelOrigin.CONTROL]
        assert control.label != dissection.label and control.label_concept_id != dissection.label_concept_id
        assert dissection.unit_category == control.unit_category == dissection.label_category
    assert hits[0].label == naming.label_text(hits[0].label_concept.name)
    # Creation order is shuffled: origin does not follow the id order.
    origins_by_id = [hit.label_origin for hit in sorted(hits, key=lambda h: h.pk)]
    assert origins_by_id != [LabelOrigin.DISSECTION, LabelOrigin.CONTROL] * (len(hits) // 2)


def test_human_labels_come_from_the_canonical_description_of_a_description_study():
    extractions = build_crowd_world(name="h", units=2)
    describe = crowd_hits.crowd_study_create(
        name="describe",
        kind=CrowdTaskKind.DESCRIPTION,
        extractions=extractions,
        gold_count=0,
        gold_rate=0.0,
        qualification_required=False,
    )
    assert describe.hits.count() == 2 and describe.assignments_per_hit == 3
    phrases = {0: [("Wheels", 3), ("wheel", 2), ("a tyre", 5)], 1: [("sky", 2), ("Blue sky", 4), ("water", 3)]}
    workers = [enter(describe, n) for n in range(3)]
    for position, worker in enumerate(workers):
        while (assignment := services.hit_next_for_worker(worker=worker)) is not None:
            text, confidence = phrases[assignment.hit.unit.index][position]
            services.assignment_submit(assignment=assignment, description=text, confidence=confidence)
    validate = crowd_hits.crowd_study_create(
        name="validate",
        kind=CrowdTaskKind.VALIDATION,
        extractions=extractions,
        gold_count=0,
        gold_rate=0.0,
        qualification_required=False,
    )
    human = {hit.unit.index: hit.label for hit in validate.hits.filter(label_origin=LabelOrigin.HUMAN)}
    # Unit 0: two raters agree (wheels ~ wheel) → the agreeing group's most confident phrase; unit 1: no agreement
    # → the highest confidence.
    assert human == {0: "wheels", 1: "blue sky"}


def test_description_and_purity_parameters_are_checked():
    extractions = build_crowd_world(name="p", units=1)
    with pytest.raises(CrowdInputError, match="Unknown task kind"):
        crowd_hits.crowd_study_create(name="x", kind="poll", extractions=extractions)
    with pytest.raises(CrowdInputError, match="purity mass"):
        crowd_hits.crowd_study_create(name="x", kind=CrowdTaskKind.PURITY, extractions=extractions, purity_mass=0)
    with pytest.raises(CrowdInputError, match="pixel truth"):
        crowd_hits.crowd_study_create(name="x", kind=CrowdTaskKind.DESCRIPTION, extractions=extractions)
    crowd_hits.crowd_study_create(
        name="x", kind=CrowdTaskKind.DESCRIPTION, extractions=extractions, gold_count=0, qualification_required=False
    )
    with pytest.raises(CrowdInputError, match="already exists"):
        crowd_hits.crowd_study_create(name="x", kind=CrowdTaskKind.DESCRIPTION, extractions=extractions)


# -- pure helpers ---------------------------------------------------------------------------------------------------


def test_canonical_description_rule():
    pick = crowd_selectors.canonical_description
    assert pick([("Wheels", 2), ("wheel", 1), ("tyre", 5)]).text == "Wheels"
    assert pick([("Wheels", 2), ("wheel", 3), ("tyre", 5)]).agreed
    assert pick([("grass", 2), ("sky", 4), ("water", 4)]) == crowd_selectors.Canonical("sky", False, 4, 1)
    assert pick([("a", 1), ("b", 1), ("b", 1), ("a", 3)]).text == "a"  # tie of groups: more summed confidence
    assert pick([("  ", 3)]) is None


def test_careless_signals_flag_fast_streaky_and_pasting_workers():
    assert crowd_selectors.longest_streak(["y", "y", "n", "y", "y", "y"]) == 3
    assert crowd_selectors.longest_streak([]) == 0
    flags = crowd_selectors.careless_signals(seconds=[1, 1, 2], study_median=10.0, answers=["yes"] * 9, pasted=2)
    assert [flag.split(":")[0] for flag in flags] == ["fast", "streak", "pasted"]
    assert (
        crowd_selectors.careless_signals(seconds=[8, 9, 10], study_median=10.0, answers=["yes", "no", "yes"], pasted=0)
        == []
    )


# -- the claim, leases ----------------------------------------------------------------------------------------------


def test_each_hit_gets_n_distinct_workers_and_nobody_sees_a_hit_twice():
    study = validation_study(units=3, assignments_per_hit=2)  # 6 HITs, 12 places
    workers = [enter(study, n) for n in range(4)]
    answered = {worker.pk: answer_everything(worker) for worker in workers}
    assert [len(answered[w.pk]) for w in workers] == [6, 6, 0, 0]
    per_hit = {}
    for assignment in CrowdAssignment.objects.filter(hit__study=study):
        per_hit.setdefault(assignment.hit_id, []).append(assignment.worker_id)
    assert all(len(ids) == len(set(ids)) == 2 for ids in per_hit.values())
    assert all(hit.assigned_count == 2 for hit in study.hits.all())


def test_two_workers_get_the_hits_in_different_orders():
    study = validation_study(units=6, assignments_per_hit=2)
    first, second = enter(study, 1), enter(study, 2)
    order_one = [a.hit_id for a in answer_everything(first)]
    order_two = [a.hit_id for a in answer_everything(second)]
    assert sorted(order_one) == sorted(order_two) and order_one != order_two


def test_an_expired_lease_frees_the_place_and_the_late_answer_is_refused():
    study = validation_study(units=1, assignments_per_hit=1, lease_seconds=60)
    late, other = enter(study, 1), enter(study, 2)
    assignment = services.hit_next_for_worker(worker=late)
    assert services.hit_next_for_worker(worker=late) == assignment  # held, not a second one
    held_hit = assignment.hit_id
    later = timezone.now() + timedelta(seconds=61)
    taken = []
    while (next_one := services.hit_next_for_worker(worker=other, now=later)) is not None:
        services.assignment_submit(assignment=next_one, answer="no", now=later)
        taken.append(next_one.hit_id)
    assert held_hit in taken and len(taken) == 2  # the place came free for someone else
    assignment.refresh_from_db()
    assert assignment.state == CrowdAssignmentState.RETURNED and assignment.reason == "lease expired"
    with pytest.raises(CrowdInputError, match="no longer yours"):
        services.assignment_submit(assignment=assignment, answer="yes")
    # The expired worker does not get the same HIT again.
    assert all(a.hit_id != held_hit for a in answer_everything(late))


def test_returning_a_hit_reopens_it_for_others_only():
    study = validation_study(units=1, assignments_per_hit=1)
    first, second = enter(study, 1), enter(study, 2)
    assignment = services.hit_next_for_worker(worker=first)
    assert services.assignment_return(assignment=assignment)
    assert assignment.hit_id in [a.hit_id for a in answer_everything(second)]
    assert answer_everything(first) == []  # the other HIT is full, and the returned one is never shown again


def test_answers_are_validated_per_kind_and_time_on_task_is_recorded():
    study = validation_study(units=1)
    worker = enter(study, 1)
    assignment = services.hit_next_for_worker(worker=worker)
    with pytest.raises(CrowdInputError, match="yes or no"):
        services.assignment_submit(assignment=assignment, answer="maybe")
    shown = timezone.now()
    services.assignment_submit(assignment=assignment, answer="no", shown_at=shown, now=shown + timedelta(seconds=7))
    assignment.refresh_from_db()
    assert assignment.state == CrowdAssignmentState.SUBMITTED and assignment.answer == "no"
    assert assignment.seconds == 7.0
    again = services.assignment_submit(assignment=assignment, answer="yes")  # a double submit changes nothing
    assert again.assignment.answer == "no"


# -- quality control -------------------------------------------------------------------------------------------


def add_gold(study, count: int, answer="no", role=HitRole.GOLD):
    some = study.hits.filter(role=HitRole.TASK).first()
    return [
        crowd_hits.gold_item_add(
            study=study, unit_hit=some, label=f"gold {n}", answer=answer, explanation="explained", role=role
        )
        for n in range(count)
    ]


def test_gold_items_come_at_the_rate_with_feedback_and_bad_workers_are_blocked():
    study = validation_study(units=10, assignments_per_hit=1, gold_rate=0.5, block_below=0.6, block_min_gold=3)
    add_gold(study, 12, answer="no")
    careless = enter(study, 1)
    results = []
    while (assignment := services.hit_next_for_worker(worker=careless)) is not None:
        results.append(services.assignment_submit(assignment=assignment, answer="yes"))
    gold = [result for result in results if result.gold]
    assert len(gold) == 3 and all(result.correct is False and result.explanation == "explained" for result in gold)
    assert gold[-1].blocked and not any(result.blocked for result in gold[:-1])
    careless.refresh_from_db()
    assert careless.blocked and "gold accuracy 0/3" in careless.blocked_reason
    assert services.hit_next_for_worker(worker=careless) is None
    careful = enter(study, 2)
    while (assignment := services.hit_next_for_worker(worker=careful)) is not None:
        services.assignment_submit(assignment=assignment, answer="no" if assignment.hit.role == HitRole.GOLD else "yes")
    right, answered = crowd_truth.worker_gold_accuracy(careful)
    careful.refresh_from_db()
    assert answered >= 1 and right == answered and not careful.blocked
    # About half of the careful worker's HITs were gold (the rate), each at most once.
    mine = CrowdAssignment.objects.filter(worker=careful)
    assert mine.filter(hit__role=HitRole.GOLD).count() == answered
    assert mine.values("hit").distinct().count() == mine.count()


def test_qualification_comes_first_and_failing_twice_ends_the_study_for_the_worker():
    study = validation_study(units=2)
    add_gold(study, 4, answer="yes", role=HitRole.QUALIFICATION)
    add_gold(study, 4, answer="no", role=HitRole.QUALIFICATION)
    study.qualification_required, study.qualification_size = True, 4
    study.save()
    good, bad = enter(study, 1), enter(study, 2)
    assert services.hit_next_for_worker(worker=good) is None  # not qualified yet
    attempt = services.qualification_start(worker=good)
    assert services.qualification_start(worker=good) == attempt and len(attempt.questions) == 4
    truth = dict(study.hits.filter(role=HitRole.QUALIFICATION).values_list("token", "gold_answer"))
    with pytest.raises(CrowdInputError, match="every question"):
        services.qualification_submit(attempt=attempt, answers={})
    answers = {token: truth[token] for token in attempt.questions}
    answers[attempt.questions[0]] = "no" if truth[attempt.questions[0]] == "yes" else "yes"  # 3 of 4: passes 75%
    assert services.qualification_submit(attempt=attempt, answers=answers).passed
    good.refresh_from_db()
    assert good.qualified and services.hit_next_for_worker(worker=good) is not None
    for _ in range(2):
        attempt = services.qualification_start(worker=bad)
        wrong = {token: "no" if truth[token] == "yes" else "yes" for token in attempt.questions}
        assert services.qualification_submit(attempt=attempt, answers=wrong).passed is False
    bad.refresh_from_db()
    assert bad.qualified is False and services.qualification_start(worker=bad) is None
    assert services.hit_next_for_worker(worker=bad) is None


def test_review_rejects_with_a_reason_reopens_the_place_and_bonuses_are_recorded(researcher):
    study = validation_study(units=1, assignments_per_hit=1)
    first, second = enter(study, 1), enter(study, 2)
    done = answer_everything(first)
    assert answer_everything(second) == []  # both HITs full
    with pytest.raises(CrowdInputError, match="why"):
        services.assignment_review(assignment=done[0], approve=False)
    rejected = services.assignment_review(
        assignment=done[0], approve=False, reason="random clicking", reviewer=researcher
    )
    assert rejected.state == CrowdAssignmentState.REJECTED and rejected.reason == "random clicking"
    approved = services.assignment_review(assignment=done[1], approve=True, reviewer=researcher)
    assert approved.state == CrowdAssignmentState.APPROVED
    assert [a.hit_id for a in answer_everything(second)] == [done[0].hit_id]  # the rejected place reopened
    assert CrowdAssignment.objects.answered().count() == 2  # approved + the new one; the rejected one is out
    bonus = services.bonus_grant(
        worker=first, amount_cents=25, reason="careful", assignment=done[1], created_by=researcher
    )
    assert bonus.amount_cents == 25
    with pytest.raises(CrowdInputError):
        services.bonus_grant(worker=second, amount_cents=25, reason="x", assignment=done[1])
    rows = {row["worker"].pk: row for row in crowd_selectors.crowd_worker_rows(study)}
    assert rows[first.pk]["bonus_cents"] == 25 and rows[first.pk]["rejected"] == 1


def test_dynamic_overlap_hooks_add_places_and_retire_hits():
    study = validation_study(units=1, assignments_per_hit=1)
    settled, open_hit = study.hits.all()
    services.hit_overlap_set(hit=settled, retired=True)
    first, second = enter(study, 1), enter(study, 2)
    assert [a.hit_id for a in answer_everything(first)] == [open_hit.pk]
    assert answer_everything(second) == []
    assert services.hit_overlap_set(hit=open_hit, max_assignments=0).max_assignments == 1  # not below taken places
    services.hit_overlap_set(hit=open_hit, max_assignments=2)
    assert [a.hit_id for a in answer_everything(second)] == [open_hit.pk]


def test_answer_rows_for_aggregation_leave_out_rejected_and_can_leave_out_simulated():
    study = validation_study(units=1, assignments_per_hit=2)
    person = enter(study, 1)
    robot, _ = services.worker_enter(study=study, adapter=CrowdAdapter.LINK, external_id="sim", simulated=True)
    mine, theirs = answer_everything(person, "yes"), answer_everything(robot, "no")
    services.assignment_review(assignment=mine[0], approve=False, reason="wrong")
    rows = crowd_selectors.crowd_answer_rows(study)
    assert len(rows) == 3 and {row["answer"] for row in rows if row["simulated"]} == {"no"}
    assert {row["origin"] for row in rows} <= set(LabelOrigin.values) and rows[0]["layer"] == "conv5"
    assert [row["worker"] for row in crowd_selectors.crowd_answer_rows(study, simulated="exclude")] == [person.pk]
    assert len(crowd_selectors.crowd_answer_rows(study, simulated="only")) == len(theirs) == 2


def test_dynamic_overlap_adds_a_worker_where_answers_split_and_retires_settled_hits():
    study = validation_study(units=1, assignments_per_hit=3, overlap_rule="dynamic")
    split, settled = study.hits.order_by("pk")
    workers = [enter(study, n) for n in range(5)]
    for number, worker in enumerate(workers[:3]):
        while (assignment := services.hit_next_for_worker(worker=worker)) is not None:
            answer = "no" if assignment.hit_id == split.pk and number == 2 else "yes"
            services.assignment_submit(assignment=assignment, answer=answer)
    split.refresh_from_db()
    settled.refresh_from_db()
    assert (split.max_assignments, split.retired) == (4, False)  # 2–1: one more worker (share 0.67 < 0.7)
    assert settled.retired  # 3–0: done
    assert [a.hit_id for a in answer_everything(workers[3])] == [split.pk]
    split.refresh_from_db()
    assert split.retired and split.max_assignments == 4  # 3–1 = 0.75 ≥ 0.7: done
    assert answer_everything(workers[4]) == []


def test_streaks_are_flagged_only_when_improbable_for_an_honest_worker():
    from annotation.crowd.aggregation import longest_run_p_value

    # By hand: 3 fair coin flips hold a run of 3 with probability 2/8; of 2 with 6/8 (all but HTH and THT).
    assert longest_run_p_value(3, 3, [0.5, 0.5]) == pytest.approx(0.25)
    assert longest_run_p_value(3, 2, [0.5, 0.5]) == pytest.approx(0.75)
    assert longest_run_p_value(5, 1, [0.5, 0.5]) == 1.0 and longest_run_p_value(4, 5, [0.5, 0.5]) == 0.0
    rng = np.random.default_rng(3)  # against a simulation: runs of ≥ 6 in 40 answers at shares 0.7 / 0.3
    draws = rng.random((20000, 40)) < 0.7
    hits = np.mean([crowd_selectors.longest_streak(row.tolist()) >= 6 for row in draws])
    assert longest_run_p_value(40, 6, [0.7, 0.3]) == pytest.approx(hits, abs=0.01)
    # An honest worker in a mostly-"yes" study: 9 "yes" in a row among 60 answers is ordinary; not flagged.
    honest = ["yes"] * 9 + ["no", "yes", "yes", "no"] * 12 + ["yes"] * 3
    shares = {"yes": 0.75, "no": 0.25}
    assert (
        crowd_selectors.careless_signals(
            seconds=[9.0] * 60, study_median=9.0, answers=honest, pasted=0, answer_shares=shares
        )
        == []
    )
    # Someone clicking "yes" 40 times in the same study is flagged, with the odds.
    flags = crowd_selectors.careless_signals(
        seconds=[9.0] * 40, study_median=9.0, answers=["yes"] * 40, pasted=0, answer_shares=shares
    )
    assert len(flags) == 1 and flags[0].startswith("streak: 40 identical answers in a row (p = ")
