"""Tests for analysis.engine.broden: writer → reader round trip, label encoding, validation."""

from __future__ import annotations

import csv
import filecmp
import os
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from analysis.engine.broden import (
    BrodenFormatError,
    BrodenReader,
    BrodenWriter,
    decode_label_png,
    encode_label_png,
    label_pixel_counts,
    validate,
)
from tests.engine.fixtures_formats import (
    read_line,
    replace_line,
    write_label_png,
    write_small_broden,
)


@pytest.fixture
def small(tmp_path):
    return write_small_broden(tmp_path / "broden")


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------------------------------------
# Label PNG encoding


def test_encode_decode_two_byte_ids():
    ids = np.array([[0, 1, 255, 256], [300, 1000, 4097, 65535]], dtype=np.int32)
    rgb = encode_label_png(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 3)
    assert rgb[1, 0].tolist() == [300 - 256, 1, 0]  # 300 = 44 + 256 * 1
    assert rgb[1, 1].tolist() == [1000 % 256, 1000 // 256, 0]  # 1000 = 232 + 256 * 3
    assert np.array_equal(decode_label_png(rgb), ids)
    rgba = np.concatenate([rgb, np.full((2, 4, 1), 255, np.uint8)], axis=2)
    assert np.array_equal(decode_label_png(rgba), ids)


def test_decode_ignores_blue_and_reads_png_from_disk(tmp_path):
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (44, 1, 200)  # blue is unused: id 300
    rgb[1, 1] = (232, 3, 0)  # id 1000
    Image.fromarray(rgb).save(tmp_path / "m.png")
    decoded = decode_label_png(np.asarray(Image.open(tmp_path / "m.png")))
    assert decoded.tolist() == [[300, 0], [0, 1000]]


def test_encode_rejects_out_of_range():
    with pytest.raises(ValueError):
        encode_label_png(np.array([[65536]]))


def test_label_pixel_counts_counts_overlapping_layers_once():
    layers = np.array([[[1, 1], [2, 0]], [[1, 3], [0, 0]]])
    ids, counts = label_pixel_counts(layers)
    assert ids.tolist() == [1, 2, 3] and counts.tolist() == [2, 1, 1]
    ids, counts = label_pixel_counts(np.zeros((0, 2, 2), np.int32))
    assert ids.size == 0 and counts.size == 0


# ------------------------------------------------------------------------------------------------
# Round trip


def test_round_trip_metadata(small):
    reader = BrodenReader(small.root)
    assert [c.name for c in reader.categories] == ["object", "part", "color", "scene"]
    assert reader.index_categories == ("object", "part", "color", "scene")
    assert reader.labels[300].name == "bird" and reader.labels[300].syns == ("fowl",)
    assert reader.labels[1000].name == "lake-s"
    assert reader.labels[small.labels["car"]].category_counts == (("object", 2),)
    # A vocabulary label that never occurs is listed with no category.
    assert reader.labels[2 + 5].category_counts == ()
    assert reader.primary_category(small.labels["window"]) == "part"
    assert reader.primary_category(7) is None
    assert reader.labels_in_category("scene") == (small.labels["street-s"], 1000)


def test_round_trip_rows_images_and_masks(small):
    reader = BrodenReader(small.root)
    rows_iter = reader.rows()
    assert isinstance(rows_iter, types.GeneratorType)  # streamed, not a list
    rows = list(rows_iter)
    assert [r.image for r in rows] == ["set/img0.png", "set/img1.png", "set/img2.png"]
    assert [r.line for r in rows] == [2, 3, 4]
    assert [r.split for r in rows] == ["train", "val", "train"]
    assert (rows[0].ih, rows[0].iw, rows[0].sh, rows[0].sw) == (8, 8, 4, 4)  # sh != ih
    assert (rows[2].ih, rows[2].iw, rows[2].sh, rows[2].sw) == (6, 10, 6, 10)
    assert rows[0].cells["part"].mask_files == ("set/img0_part_1.png", "set/img0_part_2.png")
    assert rows[0].cells["object"].mask_files == ("set/img0_object.png",)
    assert [r.image for r in reader.rows(split="val")] == ["set/img1.png"]

    for row, item in zip(rows, small.images):
        assert np.array_equal(reader.load_image(row), item["image"])
        segmentation = reader.load_segmentation(row)
        assert set(segmentation) == {"object", "part", "color", "scene"}
        for category, entry in segmentation.items():
            assert entry.layers.dtype == np.int32
            assert entry.layers.shape[1:] == (row.sh, row.sw)
            expected = item["segmentations"].get(category)
            if expected is None:
                assert entry.layers.shape[0] == 0
            else:
                expected = expected if expected.ndim == 3 else expected[None]
                assert np.array_equal(entry.layers, expected)
            assert list(entry.image_labels) == list(item["image_labels"].get(category, []))

    seg1 = reader.load_segmentation(rows[1])
    assert seg1["object"].label_ids().tolist() == [small.labels["car"], 300]
    assert seg1["scene"].image_labels == (1000, small.labels["street-s"])  # dominant first
    assert not seg1["part"].has_labels and seg1["scene"].has_labels


def _same_row(a, b) -> bool:
    return (a.line, a.image, a.split, a.ih, a.iw, a.sh, a.sw, dict(a.cells)) == (
        b.line,
        b.image,
        b.split,
        b.ih,
        b.iw,
        b.sh,
        b.sw,
        dict(b.cells),
    )


def test_indexed_rows_equal_the_streamed_rows_and_are_one_lookup(small, monkeypatch):
    reader = BrodenReader(small.root)
    streamed = list(reader.rows())
    indexed = reader.indexed_rows
    assert len(indexed) == reader.count_rows() == 3
    assert all(_same_row(indexed[k], row) for k, row in enumerate(streamed))
    assert _same_row(reader.row(2), streamed[2]) and _same_row(indexed[-1], streamed[-1])
    assert [r.image for r in indexed[1:]] == ["set/img1.png", "set/img2.png"]
    with pytest.raises(IndexError):
        indexed[3]
    cache = small.root / "index.csv.offsets.npz"
    assert cache.is_file()
    # a second reader reuses the cached index and never streams index.csv to reach a row
    again = BrodenReader(small.root)
    monkeypatch.setattr(BrodenReader, "rows", lambda *a, **k: pytest.fail("scanned index.csv"))
    assert _same_row(again.row(1), streamed[1])


def test_indexed_rows_rebuild_when_index_changes_and_skip_blank_and_quoted_lines(small):
    reader = BrodenReader(small.root)
    assert len(reader.indexed_rows) == 3
    index = small.root / "index.csv"
    lines = index.read_text().splitlines(keepends=True)
    # a quoted cell spanning two physical lines (legal csv) and a blank line between records
    fields = lines[2].rstrip("\r\n").split(",")
    fields[1] = '"val\nx"'
    index.write_text(lines[0] + lines[1] + "\n" + ",".join(fields) + "\r\n" + lines[3] + lines[2])
    fresh = BrodenReader(small.root)
    streamed = list(fresh.rows())
    assert len(fresh.indexed_rows) == len(streamed) == 4
    assert all(_same_row(fresh.indexed_rows[k], row) for k, row in enumerate(streamed))
    assert [r.line for r in fresh.indexed_rows] == [2, 5, 6, 7]


def test_indexed_rows_work_in_a_read_only_directory(small):
    root = small.root
    root.chmod(0o555)
    try:
        reader = BrodenReader(root)
        streamed = list(reader.rows())
        assert all(_same_row(reader.row(k), row) for k, row in enumerate(streamed))
        assert not (root / "index.csv.offsets.npz").exists() or os.geteuid() == 0
    finally:
        root.chmod(0o755)


def test_statistics_written_and_streamed_agree_with_hand_counts(small):
    reader = BrodenReader(small.root)
    labels = small.labels
    expected = {  # (category, frequency, coverage) hand-computed from the fixture
        labels["car"]: ("object", 2, 12 / 16 + 4 / 16),
        labels["wheel"]: ("part", 1, 2 / 16),
        labels["window"]: ("part", 1, 3 / 16),  # 4 labeled positions, one pixel shared by layers
        labels["red-c"]: ("color", 1, 1.0),
        labels["street-s"]: ("scene", 2, 2.0),
        300: ("object", 1, 4 / 16),
        1000: ("scene", 2, 2.0),
    }
    streamed = reader.label_statistics()
    codes = {(c.category, c.number): c for codes in reader.codes.values() for c in codes}
    for number, (category, frequency, coverage) in expected.items():
        label = reader.labels[number]
        assert label.frequency == frequency and label.coverage == pytest.approx(coverage, abs=1e-6)
        assert codes[(category, number)].frequency == frequency
        assert codes[(category, number)].coverage == pytest.approx(coverage, abs=1e-6)
        assert streamed[number].category_image_counts == {category: frequency}
        assert streamed[number].category_coverage[category] == pytest.approx(coverage)
        assert streamed[number].image_count == frequency
    assert streamed[labels["window"]].category_pixel_counts == {"part": 3}
    assert streamed[7].image_count == 0 and streamed[7].frequency == 0

    categories = {c.name: c for c in reader.categories}
    assert (categories["object"].first, categories["object"].last) == (labels["car"], 300)
    assert categories["object"].count == 2 and categories["object"].frequency == 3
    assert (categories["scene"].count, categories["scene"].frequency) == (2, 4)
    # c_scene: dense codes by decreasing frequency then coverage then number.
    assert [c.number for c in reader.codes["scene"]] == [labels["street-s"], 1000]
    assert [c.code for c in reader.codes["scene"]] == [1, 2]


def test_primary_category_is_the_one_with_largest_coverage(tmp_path):
    with BrodenWriter(tmp_path / "w", ["object", "material"]) as writer:
        wood = writer.add_label("wood")
        small_patch = np.zeros((2, 2), np.int32)
        small_patch[0, 0] = wood
        image = np.zeros((2, 2, 3), np.uint8)
        for name in ("a", "b"):  # object: 2 images, coverage 0.25 + 0.25
            writer.add_image(name, image, split="train", segmentations={"object": small_patch})
        writer.add_image(  # material: 1 image, coverage 1.0
            "c", image, split="train", segmentations={"material": np.full((2, 2), wood)}
        )
    reader = BrodenReader(tmp_path / "w")
    assert reader.labels[wood].category_counts == (("object", 2), ("material", 1))
    assert reader.labels[wood].frequency == 3 and reader.labels[wood].coverage == 1.5
    assert reader.primary_category(wood) == "material"


def test_statistics_progress_and_validate_progress(small):
    calls = []
    BrodenReader(small.root).label_statistics(lambda done, total: calls.append((done, total)))
    assert calls == [(0, 3), (1, 3), (2, 3), (3, 3)]
    calls.clear()
    assert validate(small.root, lambda done, total: calls.append((done, total))) == 3
    assert calls == [(0, 3), (1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize("write_threads", [0, 2])
def test_writer_bytes_are_deterministic(tmp_path, write_threads):
    a = write_small_broden(tmp_path / "a").root
    b = write_small_broden(tmp_path / "b", write_threads=write_threads).root
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) > 10
    _, mismatch, errors = filecmp.cmpfiles(a, b, [str(p) for p in files_a], shallow=False)
    assert mismatch == [] and errors == []


def test_writer_rejects_bad_input(tmp_path):
    with BrodenWriter(tmp_path / "w", ["object"]) as writer:
        car = writer.add_label("car")
        assert writer.add_label("car") == car
        image = np.zeros((4, 4, 3), np.uint8)
        with pytest.raises(ValueError, match="add_label"):
            writer.add_image("x", image, split="train", segmentations={"object": np.full((2, 2), 9)})
        with pytest.raises(ValueError, match="unknown category"):
            writer.add_image("x", image, split="train", image_labels={"scene": [car]})
        writer.add_image("x", image, split="train", segmentations={"object": np.full((2, 2), car)})
        with pytest.raises(ValueError, match="duplicate"):
            writer.add_image("x", image, split="train")
    with pytest.raises(FileExistsError):
        BrodenWriter(tmp_path / "w", ["object"])


def test_threaded_writer_copies_the_image_and_reports_write_errors(tmp_path):
    image = np.full((4, 4, 3), 7, np.uint8)
    with BrodenWriter(tmp_path / "w", ["object"], write_threads=1) as writer:
        writer.add_image("x", image, split="train")
        image[:] = 99  # the caller may reuse its buffer at once
    row = next(BrodenReader(tmp_path / "w").rows())
    assert (BrodenReader(tmp_path / "w").load_image(row) == 7).all()

    writer = BrodenWriter(tmp_path / "v", ["object"], write_threads=1)
    (tmp_path / "v" / "images" / "x.png").mkdir()  # writing the image file will fail
    with pytest.raises(IsADirectoryError):  # raised by add_image or close, whichever sees it
        writer.add_image("x", image, split="train")
        writer.close()
    writer.abort()


def test_writer_drops_empty_layers(tmp_path):
    with BrodenWriter(tmp_path / "w", ["part"]) as writer:
        wheel = writer.add_label("wheel")
        layers = np.zeros((3, 2, 2), np.int32)
        layers[1, 0, 0] = wheel
        writer.add_image("x", np.zeros((4, 4, 3), np.uint8), split="train", segmentations={"part": layers})
    row = next(BrodenReader(tmp_path / "w").rows())
    assert row.cells["part"].mask_files == ("x_part.png",)


# ------------------------------------------------------------------------------------------------
# Validation: one malformed directory per failure kind


def _break_missing(name):
    def mutate(root: Path):
        (root / name).unlink()
        return name, None

    return mutate


def _break_index_line(line, transform):
    def mutate(root: Path):
        path = root / "index.csv"
        replace_line(path, line, transform(read_line(path, line)))
        return "index.csv", line

    return mutate


def _replace_field(field_index, value):
    def transform(text: str) -> str:
        fields = text.split(",")
        fields[field_index] = value
        return ",".join(fields)

    return transform


def _break_csv_line(name, line, transform):
    def mutate(root: Path):
        path = root / name
        replace_line(path, line, transform(read_line(path, line)))
        return name, line

    return mutate


def _remove_referenced(relative, line):
    def mutate(root: Path):
        (root / "images" / relative).unlink()
        return "index.csv", line

    return mutate


def _corrupt_mask(root: Path):
    (root / "images" / "set" / "img0_part_2.png").write_bytes(b"not a png at all")
    return "index.csv", 2


def _unknown_id_in_mask(root: Path):
    labels = np.zeros((4, 4), np.int32)
    labels[2, 2] = 1234  # only 1..1000 exist
    write_label_png(root / "images" / "set" / "img1_object.png", labels)
    return "index.csv", 3


def _mis_sized_mask(root: Path):
    write_label_png(root / "images" / "set" / "img0_color.png", np.ones((5, 4), np.int32))
    return "index.csv", 2


def _grey_mask(root: Path):
    Image.fromarray(np.ones((4, 4), np.uint8)).save(root / "images" / "set" / "img0_object.png")
    return "index.csv", 2


def _mis_sized_image(root: Path):
    Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(root / "images" / "set" / "img1.png")
    return "index.csv", 3


MALFORMATIONS = {
    "missing category.csv": (_break_missing("category.csv"), "does not exist"),
    "missing label.csv": (_break_missing("label.csv"), "does not exist"),
    "missing index.csv": (_break_missing("index.csv"), "does not exist"),
    "missing c_part.csv": (_break_missing("c_part.csv"), "does not exist"),
    "missing image": (_remove_referenced("set/img1.png", 3), "set/img1.png does not exist"),
    "missing mask": (
        _remove_referenced("set/img0_part_1.png", 2),
        "set/img0_part_1.png does not exist",
    ),
    "index column missing": (
        _break_index_line(1, lambda t: t.replace("sh,", "")),
        "missing column(s) sh",
    ),
    "index fixed columns out of order": (
        _break_index_line(1, lambda t: t.replace("ih,iw", "iw,ih")),
        "header must start with",
    ),
    "index duplicate column": (
        _break_index_line(1, lambda t: t.replace("color", "part")),
        "duplicate column",
    ),
    "index category not in category.csv": (
        _break_index_line(1, lambda t: t.replace("color", "texture")),
        "'texture' is not in category.csv",
    ),
    "non-integer size": (_break_index_line(3, _replace_field(2, "8.5")), "column ih"),
    "zero size": (_break_index_line(4, _replace_field(5, "0")), "column sw"),
    "text size": (_break_index_line(2, _replace_field(4, "four")), "column sh"),
    "too few fields": (_break_index_line(3, lambda t: t.rsplit(",", 1)[0]), "expected 10 fields"),
    "unreadable mask": (_corrupt_mask, "unreadable"),
    "mask id not in label.csv": (_unknown_id_in_mask, "1234 not in label.csv"),
    "mis-sized mask": (_mis_sized_mask, "5x4, index says 4x4"),
    "grey mask": (_grey_mask, "mode L"),
    "mis-sized image": (_mis_sized_image, "8x9, index says 8x8"),
    "whole-image label not in label.csv": (
        _break_index_line(4, lambda t: t.rsplit(",", 1)[0] + ",5000"),
        "whole-image label 5000 is not in label.csv",
    ),
    "label.csv missing column": (
        _break_csv_line("label.csv", 1, lambda t: t.replace(",syns", "")),
        "missing column(s) syns",
    ),
    "label.csv bad category cell": (
        _break_csv_line("label.csv", 3, lambda t: t.replace("part(1)", "part[1]")),
        "not of the form cat(n)",
    ),
    "label.csv category not in category.csv": (
        _break_csv_line("label.csv", 2, lambda t: t.replace("object(2)", "vehicle(2)")),
        "'vehicle' is not in category.csv",
    ),
    "label.csv duplicate number": (
        _break_csv_line("label.csv", 3, lambda t: "1" + t[1:]),
        "listed twice",
    ),
    "label.csv bad coverage": (
        _break_csv_line("label.csv", 2, lambda t: t.replace("1.000000", "lots")),
        "column coverage",
    ),
    "category.csv non-integer count": (
        _break_csv_line("category.csv", 2, _replace_field(3, "two")),
        "column count",
    ),
    "c_object.csv unknown number": (
        _break_csv_line("c_object.csv", 2, _replace_field(1, "4321")),
        "4321 is not in label.csv",
    ),
}


@pytest.mark.parametrize("kind", sorted(MALFORMATIONS))
def test_validate_reports_file_and_line(small, kind):
    mutate, fragment = MALFORMATIONS[kind]
    file_name, line = mutate(small.root)
    with pytest.raises(BrodenFormatError) as caught:
        validate(small.root)
    error = caught.value
    assert Path(error.path) == small.root / file_name
    assert error.line == line
    message = str(error)
    if line is None:
        assert message.startswith(f"{small.root / file_name}: ")
    else:
        assert message.startswith(f"{small.root / file_name}, line {line}: ")
    assert fragment in message


def test_validate_accepts_valid_directory(small):
    assert validate(small.root) == 3


def test_csv_files_with_a_byte_order_mark_are_read(small):
    """Spreadsheets save CSV as UTF-8 with a byte-order mark: every CSV of the dataset still reads the same
    (the mark was read as part of the first header name, and the dataset refused with a wrong message)."""
    before = [row.cells for row in BrodenReader(small.root).rows()]
    for path in sorted(small.root.glob("*.csv")):
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert validate(small.root) == 3
    assert [row.cells for row in BrodenReader(small.root).rows()] == before
    assert validate(small.root, decode_masks=False) == 3


def test_format_error_str_and_pickle():
    import pickle

    error = BrodenFormatError("/x/index.csv", 7, "bad thing")
    assert str(error) == "/x/index.csv, line 7: bad thing"
    assert str(BrodenFormatError("/x/label.csv", None, "gone")) == "/x/label.csv: gone"
    assert str(pickle.loads(pickle.dumps(error))) == str(error)
