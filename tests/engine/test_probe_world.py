"""Tests for analysis.engine.probe_world: determinism, label statistics, boxes, Broden round trip."""

from __future__ import annotations

import csv
import filecmp
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from analysis.engine.broden import BrodenReader, validate
from analysis.engine.pascal_part import mask_to_box
from analysis.engine.probe_world import (
    BACKGROUND_MATERIALS,
    CLASS_PARTS,
    COLOR_NAMES,
    COLOR_PROTOTYPES,
    OBJECT_CLASSES,
    SCENES,
    SHARED_PARTS,
    generate_probe_world,
    name_colors,
    render_probe_image,
)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A few hundred small images, generated once for the statistics tests."""
    root = tmp_path_factory.mktemp("probe") / "world"
    calls = []
    summary = generate_probe_world(
        root,
        n_images=210,
        seed=3,
        size=64,
        progress=lambda done, total: calls.append((done, total)),
    )
    return root, summary, calls


@pytest.fixture(scope="module")
def full_resolution_world(tmp_path_factory):
    """Masks at image resolution (seg_size == size), so boxes can be compared exactly."""
    root = tmp_path_factory.mktemp("probe") / "full"
    generate_probe_world(root, n_images=35, seed=5, size=48, seg_size=48)
    return root


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    c = tmp_path / "c"
    generate_probe_world(a, n_images=40, seed=7, size=64)
    generate_probe_world(b, n_images=40, seed=7, size=64)
    generate_probe_world(c, n_images=40, seed=8, size=64)
    files = _all_files(a)
    assert files == _all_files(b) and len(files) > 200
    _, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert mismatch == [] and errors == []
    _, mismatch_c, _ = filecmp.cmpfiles(a, c, files, shallow=False)
    assert "images/probe/000000.png" in mismatch_c and "boxes.csv" in mismatch_c


def test_summary_split_and_progress(world):
    root, summary, calls = world
    assert (summary.n_images, summary.n_train, summary.n_val) == (210, 168, 42)
    assert summary.seg_size == 32 and summary.size == 64
    assert summary.class_counts == {name: 30 for name in OBJECT_CLASSES}
    assert calls[-1] == (210, 210) and len(calls) == 210
    reader = BrodenReader(root)
    assert reader.count_rows("val") == 42 and reader.count_rows("train") == 168
    with pytest.raises(FileExistsError):
        generate_probe_world(root, n_images=1)


def test_reader_reads_it_back(world):
    root, _, _ = world
    assert validate(root) == 210
    reader = BrodenReader(root)
    assert reader.index_categories == ("object", "part", "material", "color", "scene")
    row = next(reader.rows())
    assert (row.ih, row.iw, row.sh, row.sw) == (64, 64, 32, 32)
    image = reader.load_image(row)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    segmentation = reader.load_segmentation(row)
    assert segmentation["object"].layers.shape == (1, 32, 32)
    assert len(segmentation["scene"].image_labels) == 1
    assert reader.labels[segmentation["scene"].image_labels[0]].name in SCENES


def test_one_object_per_image_matching_classes_csv(world):
    root, _, _ = world
    reader = BrodenReader(root)
    classes = {r["image"]: r["object_class"] for r in _read_csv(root / "classes.csv")}
    assert set(classes.values()) == set(OBJECT_CLASSES)
    two_layer_rows = 0
    for row in reader.rows():
        segmentation = reader.load_segmentation(row)
        objects = segmentation["object"].label_ids().tolist()
        assert [reader.label_name(i) for i in objects] == [classes[row.image]]
        # Part masks lie inside the object mask, in every layer.
        on_object = segmentation["object"].layers[0] != 0
        parts = segmentation["part"].layers
        assert parts.shape[0] in (1, 2)
        assert not np.any((parts != 0) & ~on_object)
        two_layer_rows += parts.shape[0] == 2
        assert segmentation["color"].layers.shape[0] == 1 and segmentation["color"].layers.all()
    assert two_layer_rows > 100  # eyes, windows, doors, fruit overlap other parts


def test_label_statistics_cover_the_vocabulary(world):
    root, _, _ = world
    reader = BrodenReader(root)
    stats = reader.label_statistics()
    by_name = {reader.labels[number].name: item for number, item in stats.items()}
    for name in COLOR_NAMES:
        assert by_name[f"{name}-c"].category_image_counts.get("color", 0) > 0, name
    for name in BACKGROUND_MATERIALS:
        assert by_name[name].category_image_counts.get("material", 0) > 0, name
    for name in SCENES:
        assert by_name[name].category_image_counts.get("scene", 0) > 0, name
    for name in OBJECT_CLASSES:
        assert by_name[name].category_image_counts == {"object": 30}
    for parts in CLASS_PARTS.values():
        for name in parts:
            assert by_name[name].category_image_counts.get("part", 0) > 0, name
    assert reader.primary_category(reader.labels_in_category("color")[0]) == "color"


def test_parts_per_class_and_shared_parts(world):
    root, _, _ = world
    classes = {r["image"]: r["object_class"] for r in _read_csv(root / "classes.csv")}
    parts_by_class: dict[str, set[str]] = defaultdict(set)
    for box in _read_csv(root / "boxes.csv"):
        if box["kind"] == "part":
            parts_by_class[classes[box["image"]]].add(box["label"])
    for object_class in OBJECT_CLASSES:
        assert parts_by_class[object_class] == set(CLASS_PARTS[object_class])
        assert 3 <= len(CLASS_PARTS[object_class]) <= 6
    classes_by_part: dict[str, set[str]] = defaultdict(set)
    for object_class, parts in parts_by_class.items():
        for part in parts:
            classes_by_part[part].add(object_class)
    assert {"wheel", "window", "eye", "head", "leg"} <= set(SHARED_PARTS)
    for part in SHARED_PARTS:
        assert len(classes_by_part[part]) >= 2, part
    assert {"car", "bicycle"} <= classes_by_part["wheel"]
    assert {"bird", "fish", "person"} <= classes_by_part["eye"]


def test_boxes_agree_with_masks_at_full_resolution(full_resolution_world):
    root = full_resolution_world
    reader = BrodenReader(root)
    boxes: dict[str, list[dict[str, str]]] = defaultdict(list)
    for box in _read_csv(root / "boxes.csv"):
        boxes[box["image"]].append(box)
    for row in reader.rows():
        assert (row.sh, row.sw) == (row.ih, row.iw) == (48, 48)
        segmentation = reader.load_segmentation(row)
        object_rows = [b for b in boxes[row.image] if b["kind"] == "object"]
        assert len(object_rows) == 1 and object_rows[0]["instance"] == "0"
        object_box = tuple(float(object_rows[0][k]) for k in ("x1", "y1", "x2", "y2"))
        assert object_box == mask_to_box(segmentation["object"].layers[0] != 0)
        part_boxes: dict[str, list[tuple[float, ...]]] = defaultdict(list)
        for b in boxes[row.image]:
            if b["kind"] == "part":
                part_boxes[b["label"]].append(tuple(float(b[k]) for k in ("x1", "y1", "x2", "y2")))
        layers = segmentation["part"].layers
        for label, instance_boxes in part_boxes.items():
            number = next(n for n, lab in reader.labels.items() if lab.name == label)
            union = np.array(instance_boxes)
            union_box = (union[:, 0].min(), union[:, 1].min(), union[:, 2].max(), union[:, 3].max())
            # Instances of one part name share a label: the mask's box is their boxes' union.
            assert union_box == mask_to_box(np.any(layers == number, axis=0)), (row.image, label)
            assert (union[:, :2] >= np.array(object_box[:2])).all()
            assert (union[:, 2:] <= np.array(object_box[2:])).all()


def test_boxes_roughly_agree_with_half_size_masks(world):
    root, _, _ = world
    reader = BrodenReader(root)
    object_boxes = {
        b["image"]: np.array([float(b[k]) for k in ("x1", "y1", "x2", "y2")])
        for b in _read_csv(root / "boxes.csv")
        if b["kind"] == "object"
    }
    differences = []
    for row in list(reader.rows())[:30]:
        mask = reader.load_segmentation(row)["object"].layers[0] != 0
        scaled = np.array(mask_to_box(mask)) * (row.ih / row.sh)
        full = object_boxes[row.image]
        # Masks sample image pixels at segmentation-pixel centres: the scaled mask box lies inside
        # the image-resolution box (up to one pixel of the 2x2 cell), and thin tips may be missed.
        assert (scaled[:2] >= full[:2] - 1).all() and (scaled[2:] <= full[2:] + 1).all()
        differences.append(np.abs(scaled - full))
    assert np.mean(differences) < 1.5


def test_render_single_image_and_errors():
    rng = np.random.default_rng(0)
    image = render_probe_image("car", "street-s", 40, rng)
    assert image.rgb.shape == (40, 40, 3) and image.part_layers.shape == (2, 40, 40)
    assert set(image.part_names) == set(CLASS_PARTS["car"])
    assert image.object_mask.any() and not image.object_mask.all()
    assert np.array_equal(image.object_mask, image.part_layers[0] > 0)
    assert image.part_boxes.shape == (len(image.part_names), 4)
    with pytest.raises(ValueError, match="unknown object class"):
        render_probe_image("dragon", "street-s", 40, rng)
    with pytest.raises(ValueError, match="unknown scene"):
        render_probe_image("car", "moon-s", 40, rng)


def test_color_names_of_prototypes_and_near_colours():
    prototypes = [(name, rgb) for name in COLOR_NAMES for rgb in COLOR_PROTOTYPES[name]]
    pixels = np.array([[rgb for _, rgb in prototypes]], np.uint8)
    named = name_colors(pixels)[0]
    assert [COLOR_NAMES[k] for k in named] == [name for name, _ in prototypes]
    near = np.array([[(0, 0, 0), (255, 255, 255), (250, 0, 0), (0, 0, 255), (0, 200, 0)]], np.uint8)
    assert [COLOR_NAMES[k] for k in name_colors(near)[0]] == [
        "black",
        "white",
        "red",
        "blue",
        "green",
    ]
