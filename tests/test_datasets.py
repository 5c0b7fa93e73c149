"""Dataset services against the database: probe world, Broden import, PASCAL-Part import; all or nothing."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from django.core.management import call_command
from PIL import Image

from analysis.engine.pascal_part import VOC_CLASSES
from analysis.models import AnnotatedBox, Concept, Dataset, DatasetImage, Run, RunStatus
from analysis.services.datasets import broden_import_run_start, pascal_part_import_run_start, probe_world_run_start
from tests.engine.fixtures_formats import box_mask, replace_line, write_pascal_part_mat, write_small_broden

pytestmark = pytest.mark.django_db


def test_probe_world_is_generated_and_registered():
    run = probe_world_run_start(name="pw", n_images=40, size=64, seed=3, inline=True)
    assert run.status == RunStatus.SUCCEEDED, run.error
    dataset = Dataset.objects.get(name="pw")
    assert (dataset.image_count, dataset.train_count + dataset.val_count) == (40, 40)
    assert dataset.has_boxes and dataset.has_image_classes and dataset.import_run == run
    categories = set(dataset.concepts.values_list("category", flat=True))
    assert {"object", "part", "material", "color", "scene"} <= categories
    assert dataset.concepts.filter(category="color").count() == 11
    assert DatasetImage.objects.filter(dataset=dataset, object_class__category="object").count() == 40
    wheel = dataset.concepts.get(name="wheel")
    assert wheel.category == "part" and wheel.image_count > 0 and 0 < wheel.coverage < 1
    assert AnnotatedBox.objects.filter(image__dataset=dataset, kind="object").count() == 40
    assert AnnotatedBox.objects.filter(image__dataset=dataset, kind="part", concept=wheel).exists()
    # The same parameters again reuse the finished run instead of generating anew.
    again = probe_world_run_start(name="pw", n_images=40, size=64, seed=3, inline=True)
    assert again.pk == run.pk and Dataset.objects.count() == 1


def test_probe_world_refuses_an_existing_name():
    probe_world_run_start(name="pw", n_images=12, size=48, inline=True)
    run = probe_world_run_start(name="pw", n_images=13, size=48, inline=True)
    assert run.status == RunStatus.FAILED and run.error == "A dataset named 'pw' already exists."


def test_broden_import_registers_concepts_images_and_whole_image_labels(tmp_path):
    small = write_small_broden(tmp_path / "broden")
    run = broden_import_run_start(path=str(small.root), name="small", inline=True)
    assert run.status == RunStatus.SUCCEEDED, run.error
    dataset = Dataset.objects.get(name="small")
    assert dataset.image_count == 3 and dataset.categories == ["object", "part", "color", "scene"]
    bird = Concept.objects.get(dataset=dataset, number=300)
    lake = Concept.objects.get(dataset=dataset, number=1000)
    assert bird.name == "bird" and lake.name == "lake-s" and lake.category == "scene"
    street = Concept.objects.get(dataset=dataset, name="street-s")
    assert street.image_count >= 1 and street.coverage == pytest.approx(1.0)  # whole-image labels cover all
    first = dataset.images.get(index=0)
    assert (first.height, first.width, first.seg_height, first.seg_width) == (8, 8, 4, 4)


@pytest.mark.parametrize(
    "breakage,fragment",
    [
        (lambda root: (root / "label.csv").unlink(), "label.csv"),
        (
            lambda root: replace_line(root / "index.csv", 1, "image,split,ih,iw,sh,sw,object,part,color,scene,extra"),
            "index.csv, line 1",
        ),
        (lambda root: _remove_first_mask(root), ".png"),
        (lambda root: _corrupt_first_mask(root), "line 2"),
    ],
)
def test_broken_broden_directory_imports_nothing(tmp_path, breakage, fragment):
    small = write_small_broden(tmp_path / "broden")
    breakage(small.root)
    run = broden_import_run_start(path=str(small.root), name="broken", inline=True)
    assert run.status == RunStatus.FAILED
    assert fragment in run.error
    assert not Dataset.objects.exists() and not Concept.objects.exists() and not DatasetImage.objects.exists()


def _first_mask(root):
    index_lines = (root / "index.csv").read_text().splitlines()
    for cell in index_lines[1].split(",")[6:]:
        for entry in cell.split(";"):
            if entry.endswith(".png"):
                return root / "images" / entry
    raise AssertionError("no mask in the first row")


def _remove_first_mask(root):
    _first_mask(root).unlink()


def _corrupt_first_mask(root):
    _first_mask(root).write_bytes(b"not a png")


def test_import_broden_command_prints_the_run_id(tmp_path, capsys):
    small = write_small_broden(tmp_path / "broden")
    call_command("import_broden", str(small.root), "--name", "cmd", "--inline")
    run_id = int(capsys.readouterr().out.strip())
    assert Run.objects.get(pk=run_id).status == RunStatus.SUCCEEDED
    assert Dataset.objects.filter(name="cmd").exists()


def _voc_ind(name: str) -> int:
    return VOC_CLASSES.index(name) + 1


def _write_pascal(root, *, height=24, width=32):
    annotations = root / "Annotations_Part"
    images = root / "JPEGImages"
    annotations.mkdir(parents=True)
    images.mkdir()
    rng = np.random.default_rng(0)
    car_parts = [
        ("wheel_1", box_mask(height, width, 2, 14, 8, 20)),
        ("wheel_2", box_mask(height, width, 14, 14, 20, 20)),
        ("door_1", box_mask(height, width, 6, 6, 14, 14)),
    ]
    write_pascal_part_mat(
        annotations / "2008_000001.mat",
        "2008_000001",
        [("car", _voc_ind("car"), box_mask(height, width, 1, 4, 22, 21), car_parts)],
    )
    person_parts = [
        ("head", box_mask(height, width, 10, 1, 16, 7)),
        ("leye", box_mask(height, width, 11, 2, 13, 4)),
        ("luarm", box_mask(height, width, 6, 7, 9, 12)),
        ("llarm", box_mask(height, width, 6, 12, 9, 16)),
    ]
    write_pascal_part_mat(
        annotations / "2008_000002.mat",
        "2008_000002",
        [
            ("boat", _voc_ind("boat"), box_mask(height, width, 0, 10, 30, 24), []),
            ("person", _voc_ind("person"), box_mask(height, width, 5, 0, 20, 20), person_parts),
        ],
    )
    for image_id in ("2008_000001", "2008_000002"):
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(images / f"{image_id}.jpg")
    return root


def test_pascal_part_import_converts_and_registers_parts_and_boxes(tmp_path):
    root = _write_pascal(tmp_path / "pascal")
    run = pascal_part_import_run_start(path=str(root / "Annotations_Part"), name="pp", inline=True)
    assert run.status == RunStatus.SUCCEEDED, run.error
    dataset = Dataset.objects.get(name="pp")
    assert dataset.image_count == 2 and dataset.has_boxes
    parts = set(dataset.concepts.filter(category="part").values_list("name", flat=True))
    assert parts == {"wheel", "door", "head", "eye", "arm"}  # sides, numbers dropped; upper+lower arm merged
    objects = set(dataset.concepts.filter(category="object").values_list("name", flat=True))
    assert objects == {"car", "boat", "person"}
    wheels = AnnotatedBox.objects.filter(image__dataset=dataset, kind="part", concept__name="wheel").order_by("x1")
    assert [(box.x1, box.y1, box.x2, box.y2) for box in wheels] == [(2, 14, 8, 20), (14, 14, 20, 20)]
    arm = AnnotatedBox.objects.get(image__dataset=dataset, kind="part", concept__name="arm")
    assert (arm.x1, arm.y1, arm.x2, arm.y2) == (6, 7, 9, 16)
    person = AnnotatedBox.objects.get(image__dataset=dataset, kind="object", concept__name="person")
    assert arm.object_index == person.object_index == 1
    # The eye lies inside the head: both keep their pixels (separate label layers).
    eye = dataset.concepts.get(name="eye")
    head = dataset.concepts.get(name="head")
    assert eye.pixel_count == 4 and head.pixel_count == 36


def test_pascal_part_import_with_a_missing_image_imports_nothing(tmp_path):
    root = _write_pascal(tmp_path / "pascal")
    (root / "JPEGImages" / "2008_000002.jpg").unlink()
    run = pascal_part_import_run_start(path=str(root), name="pp", inline=True)
    assert run.status == RunStatus.FAILED and "2008_000002.jpg" in run.error and "not found" in run.error
    assert not Dataset.objects.exists()
    assert not any(path.name.startswith("pp-") for path in (root.parent).iterdir())


def test_pascal_part_import_with_a_malformed_mat_names_the_file(tmp_path):
    root = _write_pascal(tmp_path / "pascal")
    (root / "Annotations_Part" / "2008_000001.mat").write_bytes(b"garbage")
    run = pascal_part_import_run_start(path=str(root), name="pp", inline=True)
    assert run.status == RunStatus.FAILED and "2008_000001.mat" in run.error
    assert not Dataset.objects.exists()
    shutil.rmtree(root)
