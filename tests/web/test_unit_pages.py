"""The pages of data, networks and the unit browser render for researchers with real content."""

import pytest
from django.urls import reverse

from analysis.models import ExemplarKind, ExemplarSet, Run


def test_dataset_pages(researcher_client, make_probe_world):
    make_probe_world("tiny")
    page = researcher_client.get(reverse("analysis:dataset_detail", args=["tiny"]))
    assert page.status_code == 200 and b"wheel" in page.content and b"Concepts by category" in page.content
    images = researcher_client.get(reverse("analysis:dataset_images", args=["tiny"]) + "?split=val")
    assert images.status_code == 200 and b"val" in images.content
    image = researcher_client.get(reverse("analysis:dataset_image", args=["tiny", 0]))
    assert image.status_code == 200 and b"part" in image.content
    for overlay in ("", "?overlay=part", "?overlay=scene"):
        png = researcher_client.get(reverse("analysis:dataset_image_file", args=["tiny", 0]) + overlay)
        assert png.status_code == 200 and png["Content-Type"] == "image/png" and png.content[:4] == b"\x89PNG"
    assert (
        researcher_client.get(reverse("analysis:dataset_image_file", args=["tiny", 0]) + "?overlay=nope").status_code
        == 404
    )


def test_network_layer_and_unit_pages(researcher_client, tiny_layer_with_grids):
    network = researcher_client.get(reverse("analysis:network_detail", args=["seeded"]))
    assert network.status_code == 200 and b"conv5" in network.content and b"Receptive" in network.content
    layer = researcher_client.get(reverse("analysis:layer_detail", args=["seeded", "conv5"]) + "?sort=max")
    assert layer.status_code == 200 and layer.content.count(b'class="grid-thumb"') == 50  # a page of units
    unit = researcher_client.get(reverse("analysis:unit_detail", args=["seeded", "conv5", 3]))
    assert unit.status_code == 200
    html = unit.content.decode()
    for exemplar in ExemplarSet.objects.filter(unit__index=3, unit__layer__name="conv5"):
        assert exemplar.grid.url in html
    assert (
        html.count('class="class-grid"')
        == ExemplarSet.objects.filter(unit__index=3, unit__layer__name="conv5", kind=ExemplarKind.TOP_CLASS).count()
    )


@pytest.mark.parametrize(
    "name,args",
    [
        ("analysis:dataset_detail", ["tiny"]),
        ("analysis:layer_detail", ["seeded", "conv5"]),
        ("analysis:unit_detail", ["seeded", "conv5", 0]),
    ],
)
def test_unit_browser_is_for_researchers(client, make_user, tiny_layer, name, args):
    client.force_login(make_user("eve", "expert"))
    assert client.get(reverse(name, args=args)).status_code == 403


def test_extraction_and_grids_start_from_their_pages(
    researcher_client, tiny_layer_with_grids, django_capture_on_commit_callbacks
):
    from analysis.models import Run

    page = researcher_client.get(reverse("analysis:network_detail", args=["seeded"]))
    assert b"Extract activations" in page.content
    with django_capture_on_commit_callbacks(execute=False):
        response = researcher_client.post(
            reverse("analysis:extraction_start", args=["seeded"]),
            {"dataset": "tiny", "layers": ["conv3", "conv4"], "quantile": "0.995", "shards": "2"},
        )
    run = Run.objects.get(kind="extract", params__layers=["conv3", "conv4"])
    assert response.status_code == 302 and response["Location"] == run.get_absolute_url()
    assert run.params["shards"] == 2
    bad = researcher_client.post(
        reverse("analysis:extraction_start", args=["seeded"]),
        {"dataset": "nope", "layers": ["conv3"], "quantile": "0.995"},
    )
    assert bad.status_code == 200 and b"Select a valid choice" in bad.content

    extraction_page = researcher_client.get(tiny_layer_with_grids.get_absolute_url())
    assert b"all grids rendered" in extraction_page.content
    with django_capture_on_commit_callbacks(execute=False):
        response = researcher_client.post(
            reverse("analysis:grids_start"), {"extraction_run": tiny_layer_with_grids.pk, "layer": "conv5"}
        )
    finished = Run.objects.get(kind="render_grids")  # identical parameters: the finished run is reused
    assert response.status_code == 302 and response["Location"] == finished.get_absolute_url()


def test_grids_of_chosen_units_start_from_the_run_page(
    researcher_client, tiny_layer_with_grids, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):
        response = researcher_client.post(
            reverse("analysis:grids_start"),
            {"extraction_run": tiny_layer_with_grids.pk, "layer": "conv5", "units": "0-2, 7"},
        )
    chosen = Run.objects.get(kind="render_grids", params__units=[0, 1, 2, 7])
    assert response.status_code == 302 and response["Location"] == chosen.get_absolute_url()
    bad = researcher_client.post(
        reverse("analysis:grids_start"), {"extraction_run": tiny_layer_with_grids.pk, "layer": "conv5", "units": "5-2"}
    )
    assert bad.status_code == 200 and b"runs backwards" in bad.content
    # The refused request started nothing: the only run of chosen units is the first one.
    assert not Run.objects.filter(kind="render_grids").exclude(pk=chosen.pk).exclude(params__units=None).exists()
