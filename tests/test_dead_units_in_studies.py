"""Dead and saturated units never become expert tasks, crowd HITs, gold items or qualification questions unless
a study asks for them (``include_dead_units``); the creation pages offer the option."""

from __future__ import annotations

import pytest
from django.urls import reverse

from annotation.crowd import hits as crowd_hits
from annotation.crowd.services import CrowdInputError
from annotation.expert import services as expert_services
from annotation.models import CrowdTaskKind, HitRole
from tests.test_crowd_study import build_crowd_world
from tests.test_expert_study import build_study_world, make_experts

pytestmark = pytest.mark.django_db


def give_statuses(extraction, *, dead=(), saturated=()):
    """Summaries for every unit: ``dead`` never fire, ``saturated`` have T_k = 0, the others are live."""
    for unit in extraction.layer.unit_set.all():
        peak = 0.0 if unit.index in dead else 3.0
        threshold = 0.0 if unit.index in dead or unit.index in saturated else 1.5
        extraction.unit_summaries.create(
            unit=unit, max_activation=peak, threshold=threshold, active_images=0 if unit.index in dead else 20
        )


def test_expert_study_leaves_dead_units_out_unless_asked(researcher):
    extraction = build_study_world(units=4)
    give_statuses(extraction, dead=[1], saturated=[2])
    experts = make_experts(2)
    study = expert_services.study_create(name="live only", extraction=extraction, experts=experts)
    assert {task.unit.index for task in study.tasks.select_related("unit")} == {0, 3}
    assert study.include_dead_units is False
    everything = expert_services.study_create(
        name="with dead", extraction=extraction, experts=experts, include_dead_units=True
    )
    assert {task.unit.index for task in everything.tasks.select_related("unit")} == {0, 1, 2, 3}
    assert everything.include_dead_units is True
    with pytest.raises(expert_services.StudyInputError, match="Every chosen unit is dead or saturated"):
        expert_services.study_create(name="dead only", extraction=extraction, experts=experts, units=[1, 2])


def test_expert_study_form_offers_the_option(client, researcher):
    extraction = build_study_world(units=3)
    give_statuses(extraction, dead=[0])
    experts = make_experts(1)
    client.force_login(researcher)
    page = client.get(reverse("annotation:study_create")).content.decode()
    assert 'name="include_dead_units"' in page and "Include dead and saturated units" in page
    response = client.post(
        reverse("annotation:study_create"),
        {
            "name": "form study",
            "extraction": extraction.pk,
            "experts": [experts[0].pk],
            "plan": "full",
            "object_classes": [],
            "overlap_class": "",
            "raters_per_task": 2,
            "instructions": "Look.",
            "units": "",
            "seed": 0,
            "claim_hours": 24,
            "suggest_given_names": "on",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    from annotation.models import Study

    study = Study.objects.get(name="form study")
    assert study.include_dead_units is False and 0 not in {t.unit.index for t in study.tasks.select_related("unit")}


def test_crowd_hits_and_gold_leave_dead_units_out_unless_asked(monkeypatch):
    (extraction,) = build_crowd_world(name="dead", units=5)
    give_statuses(extraction, dead=[0], saturated=[3])
    seen = []

    def fake_gold(extraction, sets, **kwargs):  # gold and qualification are drawn from these sets
        seen.append(sorted(s.unit.index for s in sets))
        return []

    monkeypatch.setattr(crowd_hits, "_gold_specs", fake_gold)
    study = crowd_hits.crowd_study_create(
        name="live", kind=CrowdTaskKind.VALIDATION, extractions=[extraction], gold_count=4, qualification_required=True
    )
    units = {hit.unit.index for hit in study.hits.filter(role=HitRole.TASK).select_related("unit")}
    assert units == {1, 2, 4} and seen[-1] == [1, 2, 4] and study.include_dead_units is False
    described = crowd_hits.crowd_study_create(
        name="describe", kind=CrowdTaskKind.DESCRIPTION, extractions=[extraction], gold_count=0
    )
    assert {hit.unit.index for hit in described.hits.select_related("unit")} == {1, 2, 4}
    asked = crowd_hits.crowd_study_create(
        name="all", kind=CrowdTaskKind.VALIDATION, extractions=[extraction], gold_count=4, include_dead_units=True
    )
    assert {hit.unit.index for hit in asked.hits.select_related("unit")} == {0, 1, 2, 3, 4}
    assert seen[-1] == [0, 1, 2, 3, 4] and asked.include_dead_units is True
    with pytest.raises(CrowdInputError, match="every chosen unit is dead or saturated"):
        crowd_hits.crowd_study_create(
            name="none", kind=CrowdTaskKind.VALIDATION, extractions=[extraction], units=[0, 3], gold_count=0
        )


def test_crowd_study_form_offers_the_option(client, researcher):
    client.force_login(researcher)
    page = client.get(reverse("annotation:crowd_study_create")).content.decode()
    assert 'name="include_dead_units"' in page and "get no HIT, gold item or qualification question" in page
