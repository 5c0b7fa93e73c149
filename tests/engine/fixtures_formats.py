"""Helpers that write small valid and malformed Broden directories and PASCAL-Part ``.mat`` files.

Everything here is tiny (a few 8x8 images) so that tests stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io

from analysis.engine.broden import BrodenWriter, encode_label_png

# ------------------------------------------------------------------------------------------------
# Broden


@dataclass(frozen=True)
class SmallBroden:
    """What :func:`write_small_broden` wrote, for assertions."""

    root: Path
    labels: dict[str, int]
    images: list[dict]


def _filler_labels(writer: BrodenWriter, up_to: int) -> None:
    """Add dummy labels so that the next label gets number ``up_to``."""
    while len(writer._label_names) < up_to:
        writer.add_label(f"filler-{len(writer._label_names)}")


def write_small_broden(root: Path, write_threads: int = 0) -> SmallBroden:
    """A valid 3-image Broden directory exercising every feature of the format.

    Categories object, part, color, scene. Image size 8x8, segmentation 4x4 (sh != ih). Label
    numbers include 300 and 1000 (two-byte ids). Image 0 has two part layers; image 1 has a
    whole-image scene label and an object mask only; image 2 has only a whole-image scene label.
    ``write_threads`` is passed to :class:`BrodenWriter`.
    """
    rng = np.random.default_rng(0)
    labels: dict[str, int] = {}
    images: list[dict] = []
    with BrodenWriter(root, ["object", "part", "color", "scene"], write_threads=write_threads) as writer:
        for name in ["car", "wheel", "window", "red-c", "street-s"]:
            labels[name] = writer.add_label(name)
        _filler_labels(writer, 300)
        labels["bird"] = writer.add_label("bird", syns=["fowl"])
        _filler_labels(writer, 1000)
        labels["lake-s"] = writer.add_label("lake-s")
        assert labels["bird"] == 300 and labels["lake-s"] == 1000

        obj0 = np.zeros((4, 4), np.int32)
        obj0[1:4, 0:4] = labels["car"]
        part0 = np.zeros((2, 4, 4), np.int32)
        part0[0, 3, 0:2] = labels["wheel"]
        part0[0, 1, 1:3] = labels["window"]
        part0[1, 1, 2:4] = labels["window"]  # overlaps layer 0 at (1, 2): counted once
        color0 = np.full((4, 4), labels["red-c"], np.int32)
        images.append(
            dict(
                name="set/img0",
                image=rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
                split="train",
                segmentations={"object": obj0, "part": part0, "color": color0},
                image_labels={"scene": [labels["street-s"]]},
            )
        )
        obj1 = np.zeros((4, 4), np.int32)
        obj1[0:2, 0:2] = labels["bird"]
        obj1[2:4, 2:4] = labels["car"]
        images.append(
            dict(
                name="set/img1",
                image=rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
                split="val",
                segmentations={"object": obj1},
                image_labels={"scene": [labels["lake-s"], labels["street-s"]]},
            )
        )
        images.append(
            dict(
                name="set/img2",
                image=rng.integers(0, 256, (6, 10, 3), dtype=np.uint8),
                split="train",
                segmentations={},
                image_labels={"scene": [labels["lake-s"]]},
            )
        )
        for item in images:
            writer.add_image(
                item["name"],
                item["image"],
                split=item["split"],
                segmentations=item["segmentations"],
                image_labels=item["image_labels"],
            )
    return SmallBroden(root=root, labels=labels, images=images)


def replace_line(path: Path, line: int, text: str) -> None:
    """Replace physical line ``line`` (1-based) of a text file by ``text``."""
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[line - 1] = text
    path.write_text("\n".join(lines), encoding="utf-8")


def read_line(path: Path, line: int) -> str:
    return path.read_text(encoding="utf-8").split("\n")[line - 1]


def write_label_png(path: Path, labels: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(encode_label_png(labels)).save(path, format="PNG")


# ------------------------------------------------------------------------------------------------
# PASCAL-Part

PART_DTYPE = [("part_name", "O"), ("mask", "O")]
OBJECT_DTYPE = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]
ANNO_DTYPE = [("imname", "O"), ("objects", "O")]


def write_pascal_part_mat(
    path: Path,
    imname: str,
    objects: list[tuple[str, int, np.ndarray, list[tuple[str, np.ndarray]]]],
    *,
    empty_parts_as: str = "double",
) -> None:
    """Write ``Annotations_Part``-style ``.mat`` with the real nested struct layout.

    ``objects``: ``(class, class_ind, mask uint8[H, W], [(part_name, mask), ...])``. An object
    without parts gets, like the real files, an empty ``[]`` (``empty_parts_as="double"``) or an
    empty 1x0 struct array (``"struct"``).
    """
    object_array = np.zeros((1, len(objects)), dtype=OBJECT_DTYPE)
    for i, (cls, cls_ind, mask, parts) in enumerate(objects):
        object_array[0, i]["class"] = cls
        object_array[0, i]["class_ind"] = np.array([[cls_ind]], dtype=np.uint8)
        object_array[0, i]["mask"] = np.asarray(mask, dtype=np.uint8)
        if parts:
            part_array = np.zeros((1, len(parts)), dtype=PART_DTYPE)
            for j, (part_name, part_mask) in enumerate(parts):
                part_array[0, j]["part_name"] = part_name
                part_array[0, j]["mask"] = np.asarray(part_mask, dtype=np.uint8)
        elif empty_parts_as == "struct":
            part_array = np.zeros((1, 0), dtype=PART_DTYPE)
        else:
            part_array = np.zeros((0, 0))
        object_array[0, i]["parts"] = part_array
    anno = np.zeros((1, 1), dtype=ANNO_DTYPE)
    anno[0, 0]["imname"] = imname
    anno[0, 0]["objects"] = object_array
    scipy.io.savemat(path, {"anno": anno})


def box_mask(height: int, width: int, x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    """``uint8[H, W]`` with ones on columns ``x1..x2-1`` and rows ``y1..y2-1``."""
    mask = np.zeros((height, width), np.uint8)
    mask[y1:y2, x1:x2] = 1
    return mask
