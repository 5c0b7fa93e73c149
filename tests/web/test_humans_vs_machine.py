"""The unit page's humans-vs-machine panel: the machine's figures (status, dissection label and IoU, best part AP,
Net2Vec) beside the experts' answers and the crowd's votes and descriptions, linked to their studies; and the
studies' comparison tables link back to the units, with thumbnails."""

from __future__ import annotations

import pytest
from django.urls import reverse
from PIL import Image

from analysis.models import (
    DissectionBaseline,
    ExemplarKind,
    ExemplarSet,
    LayerDissection,
    Net2VecConcept,
    Net2VecStudy,
    PartDetectionResult,
    PartDetectionStudy,
    UnitDissection,
)
from analysis.services.grids import store_grid
from annotation.expert import services as expert_services
from annotation.models import Answer
from tests.test_crowd_study import answer_everything, enter, validation_study
from tests.test_expert_study import build_study_world, make_experts

pytestmark = pytest.mark.django_db


def unit_page(client, unit) -> str:
    layer = unit.layer
    response = client.get(reverse("analysis:unit_detail", args=[layer.network.name, layer.name, unit.index]))
    assert response.status_code == 200
    return response.content.decode()


def panel(html: str) -> str:
    return html[html.index('id="humans-vs-machine"') : html.index("</section>\n", html.index('class="hvm-humans"'))]


def test_experts_beside_the_machine(client, researcher):
    extraction = build_study_world(name="hvm", units=2, classes=["bird", "car"])
    layer, dataset = extraction.layer, extraction.dataset
    unit = layer.unit_set.get(index=1)
    for row in layer.unit_set.all():
        extraction.unit_summaries.create(unit=row, max_activation=4.0, threshold=1.0, active_images=20)
    wheel = dataset.concepts.get(name="wheel")
    dissection = LayerDissection.objects.create(
        run=extraction.run,
        layer=layer,
        dataset=dataset,
        extraction=extraction,
        baseline=DissectionBaseline.NONE,
        quantile=0.995,
        iou_threshold=0.04,
        directory="/nonexistent",
        complete=True,
    )
    UnitDissection.objects.create(
        dissection=dissection, unit=unit, concept=wheel, iou=0.123, is_detector=True, threshold=1.0
    )
    parts = PartDetectionStudy.objects.create(run=extraction.run, layer=layer, dataset=dataset)
    car = dataset.concepts.get(name="car")
    PartDetectionResult.objects.create(
        study=parts,
        position=0,
        object_class=car,
        part=wheel,
        name="car-wheel",
        n_views=10,
        n_instances=20,
        relative_size=0.1,
        mean_size=9.0,
        best_filter=1,
        best_ap=0.61,
        best_recall=0.8,
        ga_filters=[0, 1],
        ga_ap=0.7,
        ga_recall=0.9,
        top_filters=[1],
        top_ap=0.6,
        top_recall=0.8,
        all_ap=0.5,
        all_recall=0.9,
        single_ap=[0.2, 0.61],
        single_recall=[0.5, 0.8],
    )
    net2vec = Net2VecStudy.objects.create(run=extraction.run, layer=layer, dataset=dataset, quantile=0.995)
    Net2VecConcept.objects.create(
        study=net2vec,
        concept=wheel,
        train_images=10,
        val_images=5,
        alpha=0.9,
        best_unit=1,
        best_unit_train_iou=0.2,
        single_val_iou=0.18,
        combination_val_iou=0.31,
        all_pixels_val_iou=0.01,
    )
    experts = make_experts(2, prefix="hvm")
    study = expert_services.study_create(name="humans", extraction=extraction, experts=experts, plan="full")
    for rater, (answer, concept) in zip(study.raters.order_by("name"), [(Answer.PART, "wheel"), (Answer.NO, "")]):
        while (task := expert_services.task_next_for_rater(rater=rater)) is not None:
            expert_services.judgment_submit(rater=rater, task=task, answer=answer, concept=concept)

    client.force_login(researcher)
    html = panel(unit_page(client, unit))
    machine, humans = html.split('class="hvm-humans"')
    assert "wheel" in machine and "IoU 0.123" in machine and "detector" in machine
    assert "car-wheel · AP 0.610" in machine and "the part's best filter" in machine and "GA combination" in machine
    assert "single 0.180 · combined 0.310" in machine
    assert 'id="unit-experts"' in humans and study.get_absolute_url() in humans
    assert reverse("annotation:study_report", args=[study.pk]) in humans
    assert humans.count("Yes – semantic part") == 2 and humans.count(">No</span>") == 2  # two classes × two raters
    assert "hvm1" in humans and "hvm2" in humans and "<td>wheel</td>" in humans
    assert 'id="unit-crowd"' not in humans  # no crowd study asked about it

    # ... and back: the report's comparison table links each unit to its page, with its top-images thumbnail.
    grid = store_grid(Image.new("RGB", (40, 24), (200, 30, 30)), style=ExemplarKind.TOP_OVERALL)
    ExemplarSet.objects.create(
        extraction=extraction,
        unit=unit,
        kind=ExemplarKind.TOP_OVERALL,
        image_indices=[0],
        scores=[1.0],
        peaks=[[0, 0]],
        grid=grid,
    )
    report = client.get(reverse("annotation:study_report", args=[study.pk])).content.decode()
    table = report[report.index('id="dissection-units"') :]
    table = table[: table.index("</table>")]
    url = reverse("analysis:unit_detail", args=[layer.network.name, layer.name, 1]) + "#humans-vs-machine"
    assert f'href="{url}"' in table and f'class="unit-thumb" src="{grid.url}"' in table
    assert 'width="40" height="24"' in table

    other = layer.unit_set.get(index=0)
    UnitDissection.objects.create(dissection=dissection, unit=other, concept=None, iou=0.0, threshold=1.0)
    assert "car-wheel · AP 0.200" in panel(unit_page(client, other))


def test_crowd_votes_beside_the_machine_and_nothing_asked_yet(client, researcher):
    study = validation_study(name="hvmc", units=2, assignments_per_hit=2)
    worker = enter(study, 1)
    answer_everything(worker, answer="yes")
    hit = study.hits.filter(label_origin="dissection").select_related("unit__layer__network").first()
    client.force_login(researcher)
    html = panel(unit_page(client, hit.unit))
    humans = html.split('class="hvm-humans"')[1]
    assert 'id="unit-crowd"' in humans and reverse("annotation:crowd_study_detail", args=[study.pk]) in humans
    assert f"<td>{hit.label}</td>" in humans and "Network Dissection label" in humans and "Control" in humans
    assert '<span class="hvm-votes">1 / 0</span>' in humans
    assert "No expert or crowd study has asked about this unit yet." not in humans

    report = client.get(reverse("annotation:crowd_report", args=[study.pk])).content.decode()
    table = report[report.index('id="hit-results"') :]
    unit = hit.unit
    url = reverse("analysis:unit_detail", args=[unit.layer.network.name, unit.layer.name, unit.index])
    assert f'href="{url}#humans-vs-machine"' in table and f'class="unit-thumb" src="{hit.grid.url}"' in table

    fresh = validation_study(name="fresh", units=1, assignments_per_hit=1)
    unit = fresh.hits.first().unit
    fresh.hits.all().delete()
    assert "No expert or crowd study has asked about this unit yet." in panel(unit_page(client, unit))
