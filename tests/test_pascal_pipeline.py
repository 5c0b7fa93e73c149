"""An imported PASCAL-Part tree goes through the same pipeline as the probe world (issue #16, item 7):
``classes.csv`` from the converter, per-class exemplar grids, an expert study, object-crop part AP and
ablations — on a small tree in the real ``Annotations_Part`` format."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from analysis.engine.demo_network import demo_network_target
from analysis.engine.networks import NetworkKind, NetworkSpec
from analysis.engine.pascal_part import VOC_CLASSES
from analysis.models import AblationStudy, Dataset, ExemplarKind, ExemplarSet, PartDetectionStudy, RunStatus
from analysis.services.datasets import pascal_part_import_run_start
from analysis.services.extraction import extraction_run_start
from analysis.services.grids import grids_run_start
from analysis.services.networks import network_register
from analysis.services.parts import ablation_run_start, part_detection_run_start
from annotation.expert.services import study_create
from tests.engine.fixtures_formats import box_mask, write_pascal_part_mat

pytestmark = pytest.mark.django_db
SIZE = 64
CLASSES = ("car", "person")


def _write_pascal_tree(root, n_images: int = 16):
    """``n_images`` 64×64 images alternating a car (wheels, door) and a person (head, arm), each
    jittered; every third image also holds a small car behind the main object (so the dominant
    class is the larger one)."""
    annotations, images = root / "Annotations_Part", root / "JPEGImages"
    annotations.mkdir(parents=True)
    images.mkdir()
    rng = np.random.default_rng(7)
    for index in range(n_images):
        image_id = f"2009_{index:06d}"
        dx, dy = (int(v) for v in rng.integers(0, 12, size=2))
        objects = []
        if index % 3 == 0:
            objects.append(("car", VOC_CLASSES.index("car") + 1, box_mask(SIZE, SIZE, 50, 50, 62, 60), []))
        if index % 2 == 0:
            parts = [
                ("fwheel", box_mask(SIZE, SIZE, 6 + dx, 36 + dy, 16 + dx, 46 + dy)),
                ("bwheel", box_mask(SIZE, SIZE, 30 + dx, 36 + dy, 40 + dx, 46 + dy)),
                ("door_1", box_mask(SIZE, SIZE, 14 + dx, 20 + dy, 28 + dx, 34 + dy)),
            ]
            objects.append(
                ("car", VOC_CLASSES.index("car") + 1, box_mask(SIZE, SIZE, 4 + dx, 16 + dy, 44 + dx, 48 + dy), parts)
            )
        else:
            parts = [
                ("head", box_mask(SIZE, SIZE, 20 + dx, 4 + dy, 32 + dx, 16 + dy)),
                ("luarm", box_mask(SIZE, SIZE, 10 + dx, 18 + dy, 16 + dx, 36 + dy)),
                ("ruarm", box_mask(SIZE, SIZE, 36 + dx, 18 + dy, 42 + dx, 36 + dy)),
            ]
            objects.append(
                (
                    "person",
                    VOC_CLASSES.index("person") + 1,
                    box_mask(SIZE, SIZE, 10 + dx, 4 + dy, 42 + dx, 50 + dy),
                    parts,
                )
            )
        write_pascal_part_mat(annotations / f"{image_id}.mat", image_id, objects)
        pixels = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{image_id}.jpg", quality=95)
    return root


def test_converter_writes_the_dominant_class_of_each_image(tmp_path):
    root = _write_pascal_tree(tmp_path / "voc", n_images=6)
    run = pascal_part_import_run_start(path=str(root / "Annotations_Part"), name="pp", inline=True)
    assert run.status == RunStatus.SUCCEEDED, run.error
    dataset = Dataset.objects.get(name="pp")
    assert dataset.has_image_classes
    with open(dataset.root / "classes.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["image", "object_class"]
    # Image 3 holds a small car behind a person: the person covers more pixels, so it is a person image.
    assert [row[1] for row in rows[1:]] == ["car", "person", "car", "person", "car", "person"]
    classes = dict(dataset.images.values_list("index", "object_class__name"))
    assert [classes[index] for index in range(6)] == ["car", "person", "car", "person", "car", "person"]


def test_pascal_part_tree_runs_the_probe_world_pipeline(tmp_path, make_user):
    root = _write_pascal_tree(tmp_path / "voc")
    run = pascal_part_import_run_start(path=str(root / "Annotations_Part"), name="pp", inline=True)
    assert run.status == RunStatus.SUCCEEDED, run.error
    network_register(
        name="pp-net",
        spec=NetworkSpec(
            kind=NetworkKind.MODULE,
            target=demo_network_target(),
            kwargs={"num_classes": len(CLASSES)},
            input_size=(SIZE, SIZE),
            mean=(0.5, 0.5, 0.5),
            std=(0.25, 0.25, 0.25),
            class_names=CLASSES,
        ),
    )

    extraction = extraction_run_start(network="pp-net", dataset="pp", layers=["conv5"], batch_size=8, inline=True)
    assert extraction.status == RunStatus.SUCCEEDED, extraction.error
    per_class = ExemplarSet.objects.filter(extraction__run=extraction, kind=ExemplarKind.TOP_CLASS)
    assert set(per_class.values_list("object_class__name", flat=True)) == set(CLASSES)
    grids = grids_run_start(extraction_run=extraction.pk, layer="conv5", inline=True)
    assert grids.status == RunStatus.SUCCEEDED, grids.error
    assert all(grid is not None for grid in per_class.values_list("grid", flat=True))

    scoring = part_detection_run_start(
        network="pp-net",
        dataset="pp",
        layer="conv5",
        split="all",
        inline=True,
        inputs="object_crops",
        population=16,
        generations=3,
        min_part_size=1,
        min_instances=3,
    )
    assert scoring.status == RunStatus.SUCCEEDED, scoring.error + scoring.error_detail
    study = PartDetectionStudy.objects.get(run=scoring)
    scored = set(study.part_results.values_list("object_class__name", "part__name"))
    assert {("car", "wheel"), ("car", "door"), ("person", "head"), ("person", "arm")} <= scored

    ablation = ablation_run_start(network="pp-net", dataset="pp", layer="conv5", split="all", max_images=4, inline=True)
    assert ablation.status == RunStatus.SUCCEEDED, ablation.error + ablation.error_detail
    ablations = AblationStudy.objects.get(run=ablation)
    assert set(ablations.class_results.values_list("object_class__name", flat=True)) == set(CLASSES)

    experts = [make_user("ann", "expert"), make_user("bob", "expert")]
    layer_extraction = extraction.layer_extractions.get(layer__name="conv5")
    study = study_create(
        name="pascal study", extraction=layer_extraction, experts=experts, units=[0, 1, 2], include_dead_units=True
    )
    assert study.tasks.count() == 3 * len(CLASSES)
