"""The researcher's HIT list of a crowd study filters by agreement (issue 21 item 3): the share of a HIT's counted
answers that give its best-supported answer, and the levels unanimous / majority / split / no answers yet, for
validation (yes/no), purity (counts alike within ±1) and description studies (phrases alike once normalised),
combinable with the other filters and with paging."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from annotation.crowd import aggregation, selectors
from annotation.models import CrowdStudy, CrowdTaskKind, Hit, HitRole, LabelOrigin
from tests.test_crowd_reports import answer, make_worker
from tests.test_crowd_study import build_crowd_world, validation_study

pytestmark = pytest.mark.django_db

# Validation votes by pattern: 3 of 3 alike, 2 of 3, 1 of 2 (no majority), none yet.
PATTERNS = {
    "unanimous": ["yes", "yes", "yes"],
    "majority": ["no", "yes", "no"],
    "split": ["yes", "no"],
    "none": [],
}


def listed(client, study, **query) -> tuple[set[int], list[str]]:
    """The HIT ids of every page of the study's HIT list under ``query``, and the pages' HTML."""
    ids, pages, page = set(), [], 1
    while True:
        response = client.get(reverse("annotation:crowd_study_detail", args=[study.pk]), {**query, "page": page})
        assert response.status_code == 200
        ids |= {hit.pk for hit in response.context["page_obj"].object_list}
        pages.append(response.content.decode())
        if not response.context["page_obj"].has_next():
            return ids, pages
        page += 1


def test_agreement_levels_and_majority_support_by_hand():
    assert aggregation.majority_support(["yes", "no", "yes"]) == 2
    assert aggregation.majority_support([7, 8, 9], tolerance=1) == 3  # all within 1 of 8
    assert aggregation.majority_support([7, 9], tolerance=1) == 1 and aggregation.majority_support([]) == 0
    level = selectors.agreement_level
    assert [level(0, 0), level(1, 1), level(3, 3), level(2, 3), level(1, 2), level(2, 4)] == [
        "none",
        "single",
        "unanimous",
        "majority",
        "split",
        "split",  # 2 of 4 is no majority
    ]


def test_validation_hits_filter_by_agreement_level_and_share_with_paging_and_other_filters(researcher_client):
    study = validation_study("agree", units=60, assignments_per_hit=3)  # 120 HITs: a dissection label and a control
    workers = [make_worker(study, f"w{n}") for n in range(3)]
    hits = list(study.hits.filter(role=HitRole.TASK).order_by("position"))
    assert len(hits) == 120
    expected: dict[str, set[int]] = {name: set() for name in PATTERNS}
    for number, hit in enumerate(hits):
        pattern = ["unanimous", "unanimous", "unanimous", "majority", "split", "none"][number % 6]
        for worker, vote in zip(workers, PATTERNS[pattern]):
            answer(hit, worker, answer=vote)
        expected[pattern].add(hit.pk)
    # A rejected answer does not count: a unanimous HIT stays unanimous.
    answer(hits[0], make_worker(study, "rejected"), answer="no", state="rejected")

    for level in ("unanimous", "majority", "split", "none"):
        ids, pages = listed(researcher_client, study, agreement=level)
        assert ids == expected[level], level
    _, pages = listed(researcher_client, study, agreement="unanimous")
    assert len(pages) == 2  # 60 HITs on pages of 50: paging keeps the filter
    assert "agreement=unanimous" in pages[0] and "3 of 3 (100%)" in pages[1]
    assert "1 of 2 (50%)" not in "".join(pages)

    # The share of answers agreeing, as a range (percent): 2 of 3 is 67%, 1 of 2 is 50%; unanswered HITs have none.
    ids, pages = listed(researcher_client, study, agreement_min=60, agreement_max=70)
    assert ids == expected["majority"] and "2 of 3 (67%)" in pages[0]
    assert listed(researcher_client, study, agreement_max=50)[0] == expected["split"]
    assert listed(researcher_client, study, agreement_min=0)[0] == set().union(*expected.values()) - expected["none"]

    # Combined with the other filters: a label origin, a unit range through the unit filter, the HIT state.
    controls = set(study.hits.filter(label_origin=LabelOrigin.CONTROL).values_list("pk", flat=True))
    ids, _ = listed(researcher_client, study, agreement="split", origin=LabelOrigin.CONTROL)
    assert ids == expected["split"] & controls and ids
    unit_7 = set(study.hits.filter(unit__index=7).values_list("pk", flat=True))
    assert listed(researcher_client, study, agreement_min=0, unit=7)[0] == unit_7 - expected["none"]
    complete = listed(researcher_client, study, agreement="majority", state="complete")[0]
    assert complete == expected["majority"]  # three answers each: all in
    assert listed(researcher_client, study, agreement="split", state="complete")[0] == set()

    # What the list shows per row is what the filter judged, HIT by HIT.
    rows = selectors.crowd_hit_rows(study.hits.filter(role=HitRole.TASK))
    for row in rows:
        level = row["agreement"]["level"]
        assert row["hit"].pk in expected[level if level != "single" else "none"]

    # Malformed values are ignored, never an error.
    ids, _ = listed(researcher_client, study, agreement="most", agreement_min="lots", agreement_max=250)
    assert len(ids) == 120


def purity_and_description_studies():
    (extraction,) = build_crowd_world(name="kinds", units=4)
    units = list(extraction.layer.unit_set.order_by("index"))
    studies = {}
    for kind in (CrowdTaskKind.PURITY, CrowdTaskKind.DESCRIPTION):
        study = CrowdStudy.objects.create(name=f"kinds-{kind}", token=f"{kind}token", kind=kind, completion_code="C")
        study.extractions.set([extraction])
        studies[kind] = study
    workers = {kind: [make_worker(study, f"{kind}{n}") for n in range(3)] for kind, study in studies.items()}

    def hit(kind, unit, answers, field):
        made = Hit.objects.create(
            study=studies[kind],
            token=f"{kind}{unit.index}".ljust(16, "0"),
            position=unit.index,
            kind=kind,
            unit=unit,
            extraction=extraction,
            purity_k=15 if kind == CrowdTaskKind.PURITY else None,
            purity_shown=12 if kind == CrowdTaskKind.PURITY else None,
        )
        for worker, value in zip(workers[kind], answers):
            answer(made, worker, **{field: value, **({"confidence": 3} if field == "description" else {})})
        return made.pk

    purity = {
        "unanimous": {hit(CrowdTaskKind.PURITY, units[0], [7, 8, 9], "count")},  # all within ±1 of 8
        "majority": {hit(CrowdTaskKind.PURITY, units[1], [3, 9, 10], "count")},
        "split": {hit(CrowdTaskKind.PURITY, units[2], [2, 9], "count")},
        "none": {hit(CrowdTaskKind.PURITY, units[3], [], "count")},
    }
    descriptions = {
        "unanimous": {hit(CrowdTaskKind.DESCRIPTION, units[0], ["sky", "Sky "], "description")},
        "majority": {hit(CrowdTaskKind.DESCRIPTION, units[1], ["Wheels", "wheel", "a tyre"], "description")},
        "split": {hit(CrowdTaskKind.DESCRIPTION, units[2], ["sky", "grass"], "description")},
        "none": {hit(CrowdTaskKind.DESCRIPTION, units[3], [], "description")},
    }
    return studies, {CrowdTaskKind.PURITY: purity, CrowdTaskKind.DESCRIPTION: descriptions}


def test_purity_counts_and_descriptions_filter_by_agreement_as_each_kind_compares_answers(researcher_client):
    studies, expected = purity_and_description_studies()
    for kind, study in studies.items():
        for level, ids in expected[kind].items():
            assert listed(researcher_client, study, agreement=level)[0] == ids, (kind, level)
        majority = listed(researcher_client, study, agreement_min=60, agreement_max=70)[0]
        assert majority == expected[kind]["majority"], kind
        assert listed(researcher_client, study, agreement="split", unit=2)[0] == expected[kind]["split"]
        assert listed(researcher_client, study, agreement="split", unit=1)[0] == set()
    page = listed(researcher_client, studies[CrowdTaskKind.PURITY], agreement="unanimous")[1][0]
    assert "3 of 3 (100%)" in page and "counts within ±1 of one another are alike" in page
    page = listed(researcher_client, studies[CrowdTaskKind.DESCRIPTION], agreement="majority")[1][0]
    assert re.search(r"2 of 3 \(67%\)", page)
