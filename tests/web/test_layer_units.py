"""The layer page scales (paging, search, filters, thumbnails) and treats dead and saturated units as such,
on the layer page, the unit page and in the selectors behind them."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from analysis import selectors
from analysis.models import LayerDissection, LayerExtraction, UnitDissection, UnitStatus
from analysis.services.dissection import dissection_run_start

DEAD, SATURATED = 5, 7


@pytest.fixture
def dissected(tiny_layer_with_grids):
    """conv5 of the seeded network (128 units) dissected on the tiny world, with unit 5 made dead (it never
    fires) and unit 7 saturated (T_k = 0): their summaries say so, their dissection rows keep a label and an
    IoU — as dissection leaves them — that no page may show as a label."""
    run = dissection_run_start(network="seeded", dataset="tiny", layer="conv5", inline=True)
    assert run.status == "succeeded", run.error
    extraction = LayerExtraction.objects.get(run=tiny_layer_with_grids, layer__name="conv5")
    extraction.unit_summaries.filter(unit__index=DEAD).update(max_activation=0.0, threshold=0.0, active_images=0)
    extraction.unit_summaries.filter(unit__index=SATURATED).update(threshold=0.0)
    dissection = LayerDissection.objects.get(run=run)
    labelled = dissection.unit_results.exclude(concept=None).order_by("-iou").first()
    for index in (DEAD, SATURATED):  # a high IoU and a detector flag: what a naive page would show first
        dissection.unit_results.filter(unit__index=index).update(concept=labelled.concept, iou=0.9, is_detector=True)
    return extraction, dissection


def layer_url(**query):
    url = reverse("analysis:layer_detail", args=["seeded", "conv5"])
    return url + ("?" + "&".join(f"{key}={value}" for key, value in query.items()) if query else "")


def unit_table(html: str) -> str:
    """The layer page's table of units."""
    table = html[html.index('class="table compact unit-table"') :]
    return table[: table.index("</table>")]


def unit_numbers(html: str) -> list[int]:
    """Unit numbers of the layer table's rows, in order."""
    return [int(number) for number in re.findall(r">unit (\d+)</a>", unit_table(html))]


def every_unit(client, **query) -> list[int]:
    """Unit numbers of every page of the layer table under ``query``."""
    numbers, page = [], 1
    while True:
        html = client.get(layer_url(**query, page=page)).content.decode()
        numbers += unit_numbers(html) if "No unit matches" not in html else []
        if f"?page={page + 1}" not in html and f"&amp;page={page + 1}" not in html:
            return numbers
        page += 1


def test_status_is_computed_from_the_summary(dissected):
    extraction, _ = dissected
    statuses = selectors.unit_statuses(extraction)
    assert statuses[DEAD] == UnitStatus.DEAD and statuses[SATURATED] == UnitStatus.SATURATED
    for summary in extraction.unit_summaries.select_related("unit"):
        expected = "dead" if summary.max_activation <= 0 else "saturated" if summary.threshold == 0 else "live"
        assert statuses[summary.unit.index] == expected == summary.unit_status
    assert set(extraction.unit_summaries.dead().values_list("unit__index", flat=True)) == {
        index for index, status in statuses.items() if status != "live"
    }


def test_layer_page_is_paged_with_thumbnails_of_fixed_size(researcher_client, dissected):
    extraction, _ = dissected
    first = researcher_client.get(layer_url()).content.decode()
    dead = sorted(i for i, s in selectors.unit_statuses(extraction).items() if s != "live")
    live = [index for index in range(128) if index not in dead]
    assert unit_numbers(first) == live[:50]
    assert "Page 1 of 3" in first and 'href="?page=2"' in first
    thumbs = re.findall(r'<img class="grid-thumb"[^>]*>', first)
    assert len(thumbs) == 50
    for thumb in thumbs:  # lazy, and sized by the grid's own pixels so nothing shifts while it loads
        assert 'loading="lazy"' in thumb and re.search(r'width="\d+" height="\d+"', thumb)
    last = researcher_client.get(layer_url(page=3)).content.decode()
    assert unit_numbers(last)[-len(dead) :] == dead  # dead and saturated units last
    assert "Page 3 of 3" in last and "Next" not in last.split("Page 3 of 3")[1].split("</nav>")[0]
    everything = (
        unit_numbers(first)
        + unit_numbers(researcher_client.get(layer_url(page=2)).content.decode())
        + unit_numbers(last)
    )
    assert sorted(everything) == list(range(128))


def test_dead_units_sort_last_under_every_sort_and_never_read_as_detectors(researcher_client, dissected):
    for sort in selectors.UNIT_SORTS:
        html = researcher_client.get(layer_url(sort=sort, page=3)).content.decode()
        numbers = unit_numbers(html)
        assert {DEAD, SATURATED} <= set(numbers[-10:]), sort
    page = researcher_client.get(layer_url(sort="iou")).content.decode()
    assert DEAD not in unit_numbers(page) and SATURATED not in unit_numbers(page)  # IoU 0.9, yet not first
    table = unit_table(researcher_client.get(layer_url(status="dead")).content.decode())
    for index in (DEAD, SATURATED):
        row = table[table.index(f">unit {index}</a>") :]
        row = row[: row.index("</tr>")]
        assert "no label" in row and "detector" not in row and "0.900" not in row
    assert 'class="badge badge-dead"' in table and ">saturated</span>" in table and ">dead</span>" in table


def test_filters_search_status_label_category_and_iou_range(researcher_client, dissected):
    extraction, dissection = dissected
    dead = {i for i, s in selectors.unit_statuses(extraction).items() if s != "live"}
    assert (
        set(every_unit(researcher_client, status="dead")) == dead
        and "units match" in researcher_client.get(layer_url(status="dead")).content.decode()
    )
    assert every_unit(researcher_client, status="saturated") == sorted(
        i for i, s in selectors.unit_statuses(extraction).items() if s == "saturated"
    )
    assert set(every_unit(researcher_client, status="live")) == set(range(128)) - dead
    assert unit_numbers(researcher_client.get(layer_url(q="12")).content.decode()) == [12]

    result = (
        dissection.unit_results.exclude(concept=None)
        .exclude(unit__index__in=dead)
        .select_related("concept")
        .order_by("-iou")
        .first()
    )
    name, category = result.concept.name, result.concept.category
    expected = sorted(
        r.unit.index
        for r in UnitDissection.objects.filter(dissection=dissection, concept__name=name).select_related("unit")
    )
    by_label = researcher_client.get(layer_url(label=name, status="live")).content.decode()
    assert sorted(unit_numbers(by_label)) == sorted(set(expected) - dead)
    assert f'<option value="{name}" selected>' in by_label
    assert set(expected) - dead <= set(every_unit(researcher_client, q=name[:-1], status="live"))
    in_category = every_unit(researcher_client, category=category, status="live")
    assert (
        set(in_category)
        == {r.unit.index for r in dissection.unit_results.filter(concept__category=category).select_related("unit")}
        - dead
    )
    low, high = 0.05, 0.2
    ranged = researcher_client.get(layer_url(iou_min=low, iou_max=high, status="live")).content.decode()
    want = {r.unit.index for r in dissection.unit_results.filter(iou__gte=low, iou__lte=high).select_related("unit")}
    assert f"{len(want - dead)} of 128 units match" in ranged
    assert set(every_unit(researcher_client, iou_min=low, iou_max=high, status="live")) == want - dead
    nothing = researcher_client.get(layer_url(q="no-such-label")).content.decode()
    assert "No unit matches these filters." in nothing
    bad = researcher_client.get(layer_url(iou_min="lots", status="nonsense"))  # ignored, not an error
    assert bad.status_code == 200 and len(unit_numbers(bad.content.decode())) == 50


def test_unit_page_marks_dead_and_saturated_units(researcher_client, dissected):
    extraction, dissection = dissected
    label = dissection.unit_results.get(unit__index=DEAD).concept.name
    dead = researcher_client.get(reverse("analysis:unit_detail", args=["seeded", "conv5", DEAD])).content.decode()
    assert "Dead unit." in dead and "it never fires" in dead and "No label" in dead
    assert "badge-ok" not in dead and "Label <" not in dead  # never a detector, never "Label X"
    assert f"Its top concept by IoU, {label} (0.900)" in dead
    saturated = researcher_client.get(reverse("analysis:unit_detail", args=["seeded", "conv5", SATURATED]))
    html = saturated.content.decode()
    assert "Saturated unit." in html and "threshold T<sub>k</sub> is 0" in html and "badge-ok" not in html
    live = next(i for i, s in selectors.unit_statuses(extraction).items() if s == "live")
    page = researcher_client.get(reverse("analysis:unit_detail", args=["seeded", "conv5", live])).content.decode()
    assert "Dead unit." not in page and "Saturated unit." not in page and "No label" not in page


def test_dissection_page_never_shows_dead_units_as_detectors(researcher_client, dissected):
    extraction, dissection = dissected
    page = researcher_client.get(reverse("analysis:layer_dissection", args=["seeded", "conv5"]))
    html = page.content.decode()
    detectors = html[html.index("Detector units") : html.index('<details class="more-units">')]
    assert f">unit {DEAD}</a>" not in detectors and f">unit {SATURATED}</a>" not in detectors
    live_detectors = (
        dissection.unit_results.filter(is_detector=True)
        .exclude(unit__index__in=[i for i, s in selectors.unit_statuses(extraction).items() if s != "live"])
        .count()
    )
    assert page.context["n_detectors"] == live_detectors
    assert f'<span class="stat-value">{live_detectors}</span><span class="stat-label">detector units' in html
    assert "counted 2 dead or saturated units as detectors (unit 5, unit 7)" in html
    others = html[html.index('<details class="more-units">') :]
    row = others[others.index(f">unit {DEAD}</a>") :]
    assert row[: row.index("</tr>")].count("no label") == 1 and "never fires" in row[: row.index("</tr>")]
    layer_page = researcher_client.get(layer_url()).content.decode()
    assert f"{live_detectors} of 128 units are detectors" in layer_page and "never count" in layer_page
