"""score_parts and ablate against the database on a tiny probe world: runs end to end (object crops and whole
images), stored results agree with the engine and with the saved detections, exports are exact, commands print
run ids, pages render for researchers."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from django.core.management import call_command
from django.urls import reverse

from analysis.engine.part_detection import DetectionMatching
from analysis.engine.probe_world import OBJECT_CLASSES
from analysis.models import (
    AblationStudy,
    ClassDiscriminativeness,
    PartDetectionResult,
    PartDetectionStudy,
    Run,
    RunStatus,
)
from analysis.services.exports import run_export
from analysis.services.parts import (
    ablation_run_start,
    part_correlations,
    part_detection_arrays,
    part_detection_run_start,
)

pytestmark = pytest.mark.django_db
FAST = {"population": 16, "generations": 4, "min_part_size": 3, "min_instances": 3}


@pytest.fixture(scope="module")
def shared_world(django_db_setup, django_db_blocker, probe_world_files):
    """A tiny probe world and the seeded (untrained) demo network, committed once for the module."""
    from analysis.models import Dataset, Network
    from tests.worlds import probe_world_register, seeded_network

    with django_db_blocker.unblock():
        first_run = (Run.objects.order_by("-pk").values_list("pk", flat=True).first() or 0) + 1
        world = {"n_images": 28, "size": 64, "seed": 3}
        probe_world_register(name="parts-tiny", root=probe_world_files(**world), **world)
        seeded_network(
            name="parts-net", input_size=(64, 64), num_classes=len(OBJECT_CLASSES), class_names=OBJECT_CLASSES
        )
        score()  # the shared runs: object crops, and ablations of 3 views per class
        ablate()
        yield
        Network.objects.filter(name="parts-net").delete()
        Dataset.objects.filter(name="parts-tiny").delete()
        Run.objects.filter(pk__gte=first_run).delete()


@pytest.fixture
def world(shared_world, db):
    return "parts-net"


def ablate() -> Run:
    run = ablation_run_start(
        network="parts-net", dataset="parts-tiny", layer="conv5", split="all", max_images=3, inline=True
    )
    assert run.status == RunStatus.SUCCEEDED, run.error + run.error_detail
    return run


def score(**overrides) -> Run:
    run = part_detection_run_start(
        network="parts-net", dataset="parts-tiny", layer="conv5", split="all", inline=True, **{**FAST, **overrides}
    )
    assert run.status == RunStatus.SUCCEEDED, run.error + run.error_detail
    return run


@pytest.mark.parametrize("inputs", ["object_crops", "whole_images"])
def test_score_parts_end_to_end(world, inputs, tmp_path):
    run = score(inputs=inputs)
    study = PartDetectionStudy.objects.get(run=run)
    results = list(study.part_results.order_by("position"))
    assert study.n_parts == len(results) > 3
    units = study.layer.units
    for result in results:
        assert len(result.single_ap) == units
        assert result.best_ap == max(result.single_ap)
        assert result.ga_ap >= result.best_ap  # GA never worse than the best single filter
        assert 0.0 <= result.prior_ap <= 1.0 and 0.0 <= result.prior_recall <= 1.0  # the location-prior floor
        assert result.emerges_above_prior() == (result.ga_ap > 0.3 and result.ga_ap > result.prior_ap)
        assert len(result.top_filters) == max(1, len(result.ga_filters))
        data = part_detection_arrays(result)
        # the stored results are the engine's on the saved detections
        matching = DetectionMatching(data["det_filter"], data["det_score"], data["det_gt"], len(data["gt_view"]), units)
        chosen = np.zeros(units, dtype=bool)
        chosen[result.ga_filters] = True
        assert matching.ap(chosen)[0] == pytest.approx(result.ga_ap)
        assert matching.ap(np.ones(units, dtype=bool))[0] == pytest.approx(result.all_ap)
        assert result.n_instances == len(data["gt_view"])
        boxes = data["det_box"]
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert study.n_emerged == sum(r.ga_ap > 0.3 for r in results)
    assert study.n_emerged_above_prior == sum(r.emerges_above_prior() for r in results) <= study.n_emerged
    assert study.mean_prior_ap == pytest.approx(np.mean([r.prior_ap for r in results]))

    out = tmp_path / "export"
    written = {path.name for path in run_export(run=run, out_dir=out)}
    assert written == {"detections.csv", "ground_truth.csv", "ap.csv", "ga.csv", "run.json"}
    with open(out / "detections.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["filter", "part", "image", "x1", "y1", "x2", "y2", "score"]
    assert len(rows) == sum(r.n_detections for r in results)
    first = results[0]
    data = part_detection_arrays(first)
    mine = [row for row in rows if row["part"] == first.name]
    assert float(mine[0]["x1"]) == pytest.approx(float(data["det_box"][0, 0]), rel=1e-6)
    assert int(mine[0]["image"]) == int(data["view_image"][data["det_view"][0]])
    with open(out / "ap.csv") as handle:
        ap_rows = list(csv.DictReader(handle))
    assert len(ap_rows) == units * len(results)
    assert float(ap_rows[first.best_filter]["ap"]) == first.best_ap
    with open(out / "ga.csv") as handle:
        ga = {row["part"]: row for row in csv.DictReader(handle)}
    assert [int(f) for f in ga[first.name]["filters"].split()] == first.ga_filters
    with open(out / "ground_truth.csv") as handle:
        assert sum(1 for _ in handle) - 1 == sum(r.n_instances for r in results)


def test_regression_off_keeps_receptive_fields(world):
    study = PartDetectionStudy.objects.get(run=score(regression=False))
    result = study.part_results.order_by("position").first()
    data = part_detection_arrays(result)
    widths = data["det_box"][:, 2] - data["det_box"][:, 0]
    # receptive fields (clipped to the crop, mapped back to the image): never wider than the layer's field
    assert widths.max() <= study.layer.rf_size_x * 2 + 1e-3


def test_ablate_end_to_end(world, tmp_path):
    run = ablate()  # reuses the module's finished run (identical parameters)
    study = AblationStudy.objects.get(run=run)
    classes = list(study.class_results.all())
    assert study.n_classes == len(classes) > 3
    for row in classes:
        deltas = np.array(row.deltas)
        assert len(deltas) == study.layer.units
        assert row.sigma == pytest.approx(deltas.std())
        assert set(row.discriminative) == set(np.flatnonzero(deltas > 2 * row.sigma).tolist())
        assert row.n_images <= 3
    assert study.part_results.exists()
    out = tmp_path / "ablation"
    run_export(run=run, out_dir=out)
    with open(out / "ablation.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["object_class", "filter", "delta", "discriminative"]
    assert len(rows) == study.layer.units * len(classes)
    first = ClassDiscriminativeness.objects.filter(study=study).order_by("object_class__name").first()
    assert float(rows[0]["delta"]) == first.deltas[0]
    correlations = part_correlations(parts=None, ablation=study)
    assert correlations["rows"] and "r" in correlations["size_delta"]


def test_ablation_recomputing_the_prefix_gives_the_same_numbers(world, monkeypatch):
    """Beyond FRONTIER_BUDGET_BYTES the second pass recomputes the prefix instead of keeping every view's: memory
    bounded, results identical."""
    import analysis.services.parts as parts

    kept = {row.object_class_id: row for row in AblationStudy.objects.get(run=ablate()).class_results.all()}
    monkeypatch.setattr(parts, "FRONTIER_BUDGET_BYTES", 0)
    run = ablation_run_start(
        network="parts-net",
        dataset="parts-tiny",
        layer="conv5",
        split="all",
        max_images=3,
        batch_size=2,
        blackout=False,
        inline=True,
    )
    assert run.status == RunStatus.SUCCEEDED, run.error + run.error_detail
    recomputed = list(AblationStudy.objects.get(run=run).class_results.all())
    assert len(recomputed) == len(kept)
    for row in recomputed:
        assert row.deltas == pytest.approx(kept[row.object_class_id].deltas, abs=1e-6)
        assert row.discriminative == kept[row.object_class_id].discriminative
        assert row.delta_discriminative_set == pytest.approx(
            kept[row.object_class_id].delta_discriminative_set, abs=1e-6
        )
        assert row.delta_other_set == pytest.approx(kept[row.object_class_id].delta_other_set, abs=1e-6)


def test_correlations_use_one_part_set_for_all_three_figures(world):
    parts = PartDetectionStudy.objects.get(run=score())
    ablation = AblationStudy.objects.get(run=ablate())
    table = part_correlations(parts=parts, ablation=ablation)
    common = [row for row in table["rows"] if row["in_common"]]
    assert table["n_common"] == len(common) > 2
    assert all(row["ap"] is not None and row["delta"] is not None for row in common)
    # The blackouts cover parts the detection study's size rule dropped: they are listed, and left out of every r.
    assert len(table["rows"]) > len(common)
    assert table["size_ap"]["n"] == table["size_delta"]["n"] == table["ap_delta"]["n"] == len(common)


class _FakeImages:
    """The part mask of one 20×40 image: the part's pixels wherever its label is (both wheels)."""

    device = "cpu"

    def part_mask(self, image, number):
        import torch

        mask = torch.zeros((20, 40), dtype=torch.bool)
        mask[12:18, 2:8] = True  # the wheel of object 0
        mask[12:18, 26:32] = True  # the wheel of object 1
        return mask


def test_blackout_masks_the_part_of_the_view_s_own_object_inside_its_crop():
    from analysis.services.parts import DatasetBoxes, View, _instance_part_mask

    boxes = DatasetBoxes(sizes={0: (20, 40)})
    boxes.parts[(1, 2)] = [(0, 0, (2, 12, 8, 18)), (0, 1, (26, 12, 32, 18))]
    images = _FakeImages()
    first = _instance_part_mask(images, boxes, View(0, (0, 0, 20, 20), 0, (0, 0, 20, 20)), 1, 2, 7)
    assert first is not None and first[12:18, 2:8].all() and not first[:, 20:].any()  # not the other car's wheel
    second = _instance_part_mask(images, boxes, View(0, (20, 0, 40, 20), 1, (20, 0, 40, 20)), 1, 2, 7)
    assert second[12:18, 26:32].all() and not second[:, :20].any()
    # A crop of object 0 that stops above its wheel: the part lies outside the view, so the view is left out.
    assert _instance_part_mask(images, boxes, View(0, (0, 0, 20, 10), 0, (0, 0, 20, 10)), 1, 2, 7) is None
    # An object with no box of this part (object 2): nothing to black out.
    assert _instance_part_mask(images, boxes, View(0, (0, 0, 40, 20), 2, (0, 0, 40, 20)), 1, 2, 7) is None
    # A whole image takes every instance.
    whole = _instance_part_mask(images, boxes, View(0, (0, 0, 40, 20), -1, (0, 0, 40, 20)), 1, 2, 7)
    assert int(whole.sum()) == 2 * 36


def test_commands_print_run_ids(world):
    out = io.StringIO()
    call_command(
        "score_parts",
        "--network",
        "parts-net",
        "--dataset",
        "parts-tiny",
        "--layer",
        "conv5",
        "--split",
        "all",
        "--population",
        "16",
        "--generations",
        "2",
        "--min-part-size",
        "3",
        "--min-instances",
        "3",
        "--inline",
        stdout=out,
        stderr=io.StringIO(),
    )
    run = Run.objects.get(pk=int(out.getvalue().strip()))
    assert run.kind == "score_parts" and run.status == RunStatus.SUCCEEDED
    out = io.StringIO()
    call_command(
        "ablate",
        "--network",
        "parts-net",
        "--dataset",
        "parts-tiny",
        "--layer",
        "conv5",
        "--split",
        "all",
        "--max-images",
        "2",
        "--no-blackout",
        "--inline",
        stdout=out,
        stderr=io.StringIO(),
    )
    run = Run.objects.get(pk=int(out.getvalue().strip()))
    assert run.kind == "ablate" and run.status == RunStatus.SUCCEEDED
    assert json.dumps(run.result)


def test_pages(world, researcher_client):
    parts_run, ablation = score(), ablate()  # the module's finished runs
    study = PartDetectionStudy.objects.get(run=parts_run)
    result = study.part_results.order_by("-ga_ap").first()
    layer_url = reverse("analysis:layer_parts", args=["parts-net", "conv5"])
    response = researcher_client.get(layer_url)
    assert response.status_code == 200
    body = response.content.decode()
    assert result.name in body and "Emerges" in body and "<svg" in body
    part_url = reverse("analysis:part_detail", args=["parts-net", "conv5", result.pk])
    body = researcher_client.get(part_url).content.decode()
    assert "GA combination" in body and "Precision" in body and 'alt="' in body and "data:image/png;base64" in body
    class_row = AblationStudy.objects.get(run=ablation).class_results.first()
    body = researcher_client.get(reverse("analysis:layer_ablation", args=["parts-net", "conv5"])).content.decode()
    assert class_row.object_class.name in body and "2σ" in body
    body = researcher_client.get(
        reverse("analysis:ablation_class", args=["parts-net", "conv5", class_row.pk])
    ).content.decode()
    assert "<svg" in body and "δ" in body
    body = researcher_client.get(reverse("analysis:part_correlations", args=["parts-net", "conv5"])).content.decode()
    assert "Pearson" in body and "<svg" in body
    assert (
        researcher_client.get(reverse("analysis:layer_detail", args=["parts-net", "conv5"]))
        .content.decode()
        .count(layer_url)
        >= 1
    )
    # researchers only
    from django.test import Client

    assert Client().get(layer_url).status_code in (302, 403)
    assert PartDetectionResult.objects.filter(study=study).count() == study.n_parts
