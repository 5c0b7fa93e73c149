"""Crowd task lists and review pages scale: paged, filtered by layer, unit, label, origin and state, each unit
linked to its page with a thumbnail of the grid the HIT shows."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from annotation.crowd import services
from annotation.models import LabelOrigin
from tests.test_crowd_study import enter, validation_study

pytestmark = pytest.mark.django_db


def rows(html: str, table_start: str = '<table class="table compact">') -> list[str]:
    table = html[html.index(table_start) :]
    table = table[: table.index("</table>")]
    return re.findall(r"<tr[ >].*?</tr>", table, flags=re.S)[1:]  # the header row left out


@pytest.fixture
def big_study():
    """60 task HITs (30 units × a dissection label and a control), one worker answered the first 25."""
    study = validation_study("big", units=30, assignments_per_hit=1)
    worker = enter(study, 1)
    for _ in range(25):
        assignment = services.hit_next_for_worker(worker=worker)
        services.assignment_submit(assignment=assignment, answer="yes")
    return study


def test_hit_list_is_paged_and_filtered(researcher_client, big_study):
    url = reverse("annotation:crowd_study_detail", args=[big_study.pk])
    first = researcher_client.get(url).content.decode()
    assert len(rows(first)) == 50 and "Page 1 of 2" in first and "60 HITs." in first
    second = researcher_client.get(url + "?role=task&page=2").content.decode()
    assert len(rows(second)) == 10 and "Page 2 of 2" in second
    one_unit = researcher_client.get(url + "?unit=7").content.decode()
    found = rows(one_unit)
    assert len(found) == 2 and "2 HITs match." in one_unit
    hit = big_study.hits.filter(unit__index=7).select_related("unit__layer__network", "grid").first()
    link = reverse("analysis:unit_detail", args=[hit.unit.layer.network.name, "conv5", 7])
    assert all(f'href="{link}#humans-vs-machine"' in row and 'class="unit-thumb"' in row for row in found)
    controls = researcher_client.get(url + f"?origin={LabelOrigin.CONTROL}").content.decode()
    assert "30 HITs match." in controls and "Network Dissection label" not in "".join(rows(controls))
    complete = researcher_client.get(url + "?state=complete").content.decode()
    assert "25 HITs match." in complete and len(rows(complete)) == 25
    still_open = researcher_client.get(url + "?state=open").content.decode()
    assert "35 HITs match." in still_open
    label = hit.label
    by_label = researcher_client.get(url + f"?label={label}").content.decode()
    assert all(label in row for row in rows(by_label))
    nothing = researcher_client.get(url + "?layer=conv1").content.decode()
    assert "No HIT of this role matches these filters." in nothing


def test_review_page_is_paged_and_filtered(researcher_client, big_study):
    url = reverse("annotation:crowd_review", args=[big_study.pk])
    everything = researcher_client.get(url + "?state=").content.decode()
    assert "25 assignments, newest first." in everything and len(rows(everything)) == 25
    big_study.refresh_from_db()
    worker = enter(big_study, 2)
    for _ in range(30):
        assignment = services.hit_next_for_worker(worker=worker)
        services.assignment_submit(assignment=assignment, answer="no")
    first = researcher_client.get(url + "?state=").content.decode()
    assert "55 assignments" in first and len(rows(first)) == 50 and "Page 1 of 2" in first
    second = researcher_client.get(url + "?state=&page=2").content.decode()
    assert len(rows(second)) == 5
    answered = big_study.hits.filter(assignments__isnull=False).select_related("unit").first()
    one_unit = researcher_client.get(url + f"?state=&unit={answered.unit.index}").content.decode()
    found = rows(one_unit)
    assert found and all(f"unit {answered.unit.index}</span>" in row for row in found)
    assert all('class="unit-thumb"' in row for row in found)
