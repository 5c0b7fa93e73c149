"""Tests for analysis.engine.pascal_part on small .mat files in the real nested struct layout."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from analysis.engine.pascal_part import (
    VOC_CLASSES,
    PartSizeAccumulator,
    PartSizeStats,
    PascalPartFormatError,
    iter_annotations,
    mask_to_box,
    masks_to_boxes,
    normalise_part_name,
    rare_parts,
    read_annotation,
    select_parts,
    tiny_parts,
)
from tests.engine.fixtures_formats import box_mask, write_pascal_part_mat

H, W = 20, 30


def _ind(name: str) -> int:
    return VOC_CLASSES.index(name) + 1


@pytest.fixture
def scene(tmp_path):
    """cat (with parts), boat (no parts, []), person (upper+lower arm) over the cat, chair (1x0)."""
    cat_parts = [
        ("head", box_mask(H, W, 2, 2, 8, 8)),
        ("lear", box_mask(H, W, 2, 2, 4, 4)),
        ("rear", box_mask(H, W, 6, 2, 8, 4)),
        ("lfleg", box_mask(H, W, 10, 12, 12, 18)),
        ("lfpa", box_mask(H, W, 10, 17, 12, 18)),
    ]
    person_parts = [
        ("luarm", box_mask(H, W, 14, 5, 16, 9)),
        ("llarm", box_mask(H, W, 15, 9, 17, 13)),
        ("ruarm", box_mask(H, W, 20, 5, 22, 9)),
        ("head", box_mask(H, W, 16, 1, 20, 5)),
    ]
    objects = [
        ("cat", _ind("cat"), box_mask(H, W, 1, 1, 18, 19), cat_parts),
        ("boat", _ind("boat"), box_mask(H, W, 22, 14, 29, 19), []),
        ("person", _ind("person"), box_mask(H, W, 14, 1, 23, 14), person_parts),
    ]
    path = tmp_path / "2008_000123.mat"
    write_pascal_part_mat(path, "2008_000123", objects)
    chair_path = tmp_path / "2008_000007.mat"
    write_pascal_part_mat(
        chair_path,
        "2008_000007",
        [("chair", _ind("chair"), box_mask(H, W, 0, 0, 5, 5), [])],
        empty_parts_as="struct",
    )
    return tmp_path, path, chair_path


def test_saved_file_has_the_real_nested_layout(scene):
    _, path, _ = scene
    anno = scipy.io.loadmat(path)["anno"][0, 0]
    objects = anno["objects"]
    assert objects.shape == (1, 3)
    assert objects[0, 0]["class"][0] == "cat" and objects[0, 0]["class_ind"][0, 0] == 8
    assert objects[0, 0]["mask"].dtype == np.uint8 and objects[0, 0]["mask"].shape == (H, W)
    assert objects[0, 0]["parts"].shape == (1, 5)
    assert objects[0, 0]["parts"][0, 3]["part_name"][0] == "lfleg"


def test_read_objects_parts_and_boxes(scene):
    _, path, chair_path = scene
    anno = read_annotation(path)
    assert (anno.image_id, anno.image_name, anno.height, anno.width) == (
        "2008_000123",
        "2008_000123",
        H,
        W,
    )
    assert [o.class_name for o in anno.objects] == ["cat", "boat", "person"]
    assert [o.class_index for o in anno.objects] == [8, 4, 15]
    cat, boat, person = anno.objects
    assert cat.box == (1.0, 1.0, 18.0, 19.0)  # columns 1..17 inclusive → x2 = 18
    assert cat.mask.dtype == bool and cat.mask.sum() == 17 * 18
    assert [p.name for p in cat.parts] == ["head", "ear", "ear", "leg", "paw"]
    assert cat.parts[3].box == (10.0, 12.0, 12.0, 18.0)
    assert boat.parts == ()
    # Upper and lower arm merge into one arm instance whose box covers both (GG'18).
    assert [p.name for p in person.parts] == ["arm", "arm", "head"]
    assert person.parts[0].raw_names == ("luarm", "llarm")
    assert person.parts[0].box == (14.0, 5.0, 17.0, 13.0)
    assert person.parts[1].raw_names == ("ruarm",)
    unmerged = read_annotation(path, merge_subparts=False)
    assert [p.name for p in unmerged.objects[2].parts] == ["arm", "arm", "arm", "head"]
    chair = read_annotation(chair_path)
    assert chair.objects[0].class_name == "chair" and chair.objects[0].parts == ()


def test_occlusion_later_objects_on_top(scene):
    _, path, _ = scene
    anno = read_annotation(path)
    objects = anno.object_label_map()
    assert objects[10, 15] == 3  # person (third) painted over the cat
    assert objects[10, 5] == 1 and objects[16, 25] == 2 and objects[0, 0] == 0
    assert not anno.visible_mask(0)[10, 15] and anno.objects[0].mask[10, 15]
    assert anno.class_label_map()[10, 15] == _ind("person")
    ids = {("cat", "leg"): 1, ("cat", "head"): 2, ("person", "arm"): 3}
    parts = anno.part_label_map(ids)
    assert parts[5, 5] == 2 and parts[15, 10] == 1
    assert parts[10, 15] == 3  # person's lower arm over the cat
    assert parts[12, 20] == 0  # inside the person but no part there: the cat below is hidden
    assert parts[3, 17] == 0  # person head not in the mapping


def test_masks_to_boxes_matches_naive_loop():
    rng = np.random.default_rng(0)
    masks = rng.random((25, 7, 9)) > 0.93
    masks[0] = False
    boxes = masks_to_boxes(masks)
    for mask, box in zip(masks, boxes):
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            assert np.isnan(box).all()
            assert mask_to_box(mask) is None
        else:
            expected = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert tuple(box) == expected and mask_to_box(mask) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("head", "head"), ("leye", "eye"), ("reye", "eye"), ("lear", "ear"), ("rebrow", "eyebrow"),
        ("mouth", "mouth"), ("hair", "hair"), ("torso", "torso"), ("neck", "neck"),
        ("llarm", "arm"), ("ruarm", "arm"), ("lhand", "hand"), ("llleg", "leg"), ("ruleg", "leg"),
        ("lfoot", "foot"), ("nose", "nose"), ("muzzle", "muzzle"), ("lhorn", "horn"),
        ("tail", "tail"), ("beak", "beak"), ("lwing", "wing"), ("rleg", "leg"),
        ("lfleg", "leg"), ("rbleg", "leg"), ("lfpa", "paw"), ("rbpa", "paw"), ("lfho", "hoof"),
        ("lfuleg", "leg"), ("rblleg", "leg"), ("frontside", "side"), ("leftside", "side"),
        ("roofside", "roof"), ("leftmirror", "mirror"), ("fliplate", "license plate"),
        ("bliplate", "license plate"), ("door_1", "door"), ("wheel_3", "wheel"),
        ("headlight_1", "headlight"), ("window_12", "window"), ("stern", "stern"),
        ("engine_2", "engine"), ("artifact_wing_1", "artifact wing"), ("pot", "pot"),
        ("plant", "plant"), ("screen", "screen"), ("cap", "cap"), ("body", "body"),
        ("saddle", "saddle"), ("handlebar", "handlebar"), ("chainwheel", "chainwheel"),
        ("fwheel", "wheel"), ("bwheel", "wheel"), ("coach_4", "coach"),
        ("cleftside_2", "coach side"), ("hfrontside", "head side"), ("croofside_1", "coach roof"),
        # Generic rule for names outside the table.
        ("front_left_fender_2", "fender"), ("Upper_Deck", "deck"),
    ],
)  # fmt: skip
def test_normalise_part_name(raw, expected):
    assert normalise_part_name(raw) == expected


def _write_bad(path, mutate):
    objects = [("cat", _ind("cat"), box_mask(H, W, 1, 1, 5, 5), [("head", box_mask(H, W, 1, 1, 3, 3))])]
    write_pascal_part_mat(path, "x", objects)
    mutate(path)


def _resave(transform):
    def mutate(path):
        data = scipy.io.loadmat(path)
        transform(data["anno"])
        scipy.io.savemat(path, {"anno": data["anno"]})

    return mutate


def _set_object_field(field, value):
    def transform(anno):
        anno[0, 0]["objects"][0, 0][field] = value

    return transform


def _set_part_mask(anno):
    anno[0, 0]["objects"][0, 0]["parts"][0, 0]["mask"] = np.ones((H + 1, W), np.uint8)


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda p: p.write_bytes(b"MATLAB 5.0 MAT-file garbage" * 3), "unreadable .mat file"),
        (lambda p: scipy.io.savemat(p, {"other": np.eye(2)}), "no variable 'anno'"),
        (lambda p: scipy.io.savemat(p, {"anno": np.eye(2)}), "'anno' is not a 1x1 struct"),
        (
            _resave(_set_object_field("class_ind", np.array([[3]], np.uint8))),
            "does not match class_ind",
        ),
        (_resave(_set_object_field("class_ind", np.array([[21]], np.uint8))), "not in 1..20"),
        (
            _resave(_set_object_field("mask", np.ones((3, 3, 2), np.uint8))),
            "not a 2-D numeric array",
        ),
        (_resave(_set_part_mask), "mask is 21x30, expected 20x30"),
        (
            lambda p: scipy.io.savemat(p, {"anno": np.zeros((1, 1), dtype=[("imname", "O"), ("objs", "O")])}),
            "lacks field(s) objects",
        ),
    ],
)
def test_malformed_files_raise_naming_the_file(tmp_path, mutate, fragment):
    path = tmp_path / "2009_000001.mat"
    _write_bad(path, mutate)
    with pytest.raises(PascalPartFormatError) as caught:
        read_annotation(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert fragment in str(caught.value)


def test_missing_file_and_iteration_order(scene, tmp_path):
    directory, _, _ = scene
    assert [a.image_id for a in iter_annotations(directory)] == ["2008_000007", "2008_000123"]
    assert [a.image_id for a in iter_annotations(directory, ["2008_000123"])] == ["2008_000123"]
    with pytest.raises(PascalPartFormatError, match="2099_000001.mat: file does not exist"):
        list(iter_annotations(directory, ["2099_000001"]))


def _annotation_with_parts(tmp_path, name, n_big, n_small, small_size):
    parts = [("head", box_mask(H, W, 0, 0, 20, 16))] * n_big
    parts += [("leye", box_mask(H, W, 0, 0, small_size, small_size))] * n_small
    path = tmp_path / f"{name}.mat"
    write_pascal_part_mat(path, name, [("cat", _ind("cat"), box_mask(H, W, 0, 0, 20, 16), parts)])
    return read_annotation(path)


def test_gg18_filters_drop_tiny_and_rare_parts(tmp_path):
    accumulator = PartSizeAccumulator()
    accumulator.add(_annotation_with_parts(tmp_path, "a", n_big=6, n_small=6, small_size=15))
    accumulator.add(_annotation_with_parts(tmp_path, "b", n_big=5, n_small=5, small_size=15))
    stats = accumulator.result()
    assert stats[("cat", "head")] == PartSizeStats("cat", "head", 11, 20.0, 16.0)
    assert stats[("cat", "eye")].count == 11 and stats[("cat", "eye")].mean_extent == 15.0
    assert tiny_parts(stats) == {("cat", "eye")}  # average of widths and heights ≤ 15 px
    assert rare_parts(stats) == set()
    assert select_parts(stats) == [("cat", "head")]

    boundary = {
        ("dog", "tail"): PartSizeStats("dog", "tail", 10, 40.0, 40.0),  # ≤ 10 samples: dropped
        ("dog", "head"): PartSizeStats("dog", "head", 11, 15.0, 16.0),  # extent 15.5: kept
        ("bus", "door"): PartSizeStats("bus", "door", 50, 14.0, 16.0),  # extent 15.0: dropped
    }
    assert rare_parts(boundary) == {("dog", "tail")}
    assert tiny_parts(boundary) == {("bus", "door")}
    assert select_parts(boundary) == [("dog", "head")]
    assert select_parts(boundary, max_count=5, max_mean_extent=10) == sorted(boundary)
