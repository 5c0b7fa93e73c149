"""Convert PASCAL-Part annotations into a Broden-format directory (plus ``boxes.csv``).

Every downstream step (extraction, dissection, part detection) then reads one format. Categories:
``object`` (VOC class per pixel, later objects occluding earlier ones) and ``part`` (normalised part
names, shared across classes as Broden unifies them, e.g. one ``wheel`` for car, bus and bicycle;
the class a part belongs to stays in ``boxes.csv`` through its object). Choices (ours):

* Segmentation masks are kept at image resolution (Broden halves them; PASCAL masks are exact).
* Parts of one object that overlap (a head and the eye inside it) go to separate label layers, so
  each pixel keeps every part it belongs to; occluded part pixels (under a later object) are dropped.
* ``classes.csv`` (one object class per image, which per-class exemplar grids, expert studies,
  object-crop part scoring and ablations read): the class whose visible pixels (after occlusion)
  cover the most of the image; ties go to the class listed first in the file. Images without any
  object get no row. PASCAL images often hold several classes; GG'18 works on object instances, so
  crop-based steps use every instance from ``boxes.csv`` and only the per-image grids and
  classification steps use this dominant class.
* Split: VOC's ``ImageSets/Main/train.txt`` / ``val.txt`` when given; otherwise an image is ``val``
  when its id's CRC32 is divisible by 5 (deterministic, about 20%).
"""

from __future__ import annotations

import os
import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .broden import BrodenWriter
from .pascal_part import PascalPartAnnotation, PascalPartFormatError, iter_annotations
from .sidecars import CLASSES_FILE, BoxRow, write_boxes, write_classes

ProgressCallback = Callable[[int, int], None]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class ConversionSummary:
    out_dir: str
    images: int
    objects: int
    parts: int
    object_labels: tuple[str, ...]
    part_labels: tuple[str, ...]


def read_split_lists(split_dir: str | os.PathLike[str] | None) -> dict[str, str]:
    """``{image_id: split}`` from VOC ``train.txt``/``val.txt`` in ``split_dir`` (empty when absent)."""
    splits: dict[str, str] = {}
    if split_dir is None:
        return splits
    for split in ("train", "val"):
        path = Path(split_dir) / f"{split}.txt"
        if path.exists():
            for line in path.read_text().split():
                splits[line.strip()] = split
    return splits


def default_split(image_id: str) -> str:
    return "val" if zlib.crc32(image_id.encode()) % 5 == 0 else "train"


def find_image(image_dir: Path, image_name: str) -> Path:
    for suffix in IMAGE_SUFFIXES:
        candidate = image_dir / f"{image_name}{suffix}"
        if candidate.exists():
            return candidate
    raise PascalPartFormatError(image_dir / f"{image_name}.jpg", "image file not found")


def part_layers(annotation: PascalPartAnnotation, part_ids: dict[str, int]) -> np.ndarray:
    """``int32[L, H, W]``: visible part pixels, overlapping parts of one object in separate layers."""
    object_map = annotation.object_label_map()
    layers: list[np.ndarray] = []
    for obj in annotation.objects:
        visible = object_map == obj.index + 1
        for part in obj.parts:
            pixels = part.mask & visible
            if not pixels.any():
                continue
            for layer in layers:  # first layer whose pixels are free here
                if not (layer[pixels] != 0).any():
                    layer[pixels] = part_ids[part.name]
                    break
            else:
                layer = np.zeros(object_map.shape, np.int32)
                layer[pixels] = part_ids[part.name]
                layers.append(layer)
    return np.stack(layers) if layers else np.zeros((0, *object_map.shape), np.int32)


def dominant_class(annotation: PascalPartAnnotation, object_map: np.ndarray) -> str | None:
    """The object class covering the most visible pixels of the image (first listed wins a tie), or None.

    ``object_map``: ``int32[H, W]`` of 1-based object indices after occlusion
    (:meth:`PascalPartAnnotation.object_label_map`).
    """
    if not annotation.objects:
        return None
    pixels = np.bincount(object_map.ravel(), minlength=len(annotation.objects) + 1)[1:]
    area: dict[str, int] = {}
    for obj in annotation.objects:
        area[obj.class_name] = area.get(obj.class_name, 0) + int(pixels[obj.index])
    best = max(area.values())
    if best == 0:
        return None
    return next(name for name, value in area.items() if value == best)


def convert_pascal_part(
    annotation_dir: str | os.PathLike[str],
    image_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    split_dir: str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
) -> ConversionSummary:
    """Write ``out_dir`` as a Broden directory from ``Annotations_Part/*.mat`` and the VOC images.

    All or nothing: the directory is built under a temporary name and renamed at the end; on any
    error (a malformed ``.mat``, a missing image, an image whose size differs from its masks) nothing
    is left behind and a :class:`PascalPartFormatError` names the file.
    """
    annotation_dir, image_dir, out_dir = Path(annotation_dir), Path(image_dir), Path(out_dir)
    if not annotation_dir.is_dir():
        raise PascalPartFormatError(annotation_dir, "annotation directory not found")
    mat_files = sorted(annotation_dir.glob("*.mat"))
    if not mat_files:
        raise PascalPartFormatError(annotation_dir, "no .mat files")
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists")
    splits = read_split_lists(split_dir)
    building = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(building, ignore_errors=True)
    writer = BrodenWriter(building, ("object", "part"))
    object_ids: dict[str, int] = {}
    part_ids: dict[str, int] = {}
    boxes: list[BoxRow] = []
    image_classes: list[tuple[str, str]] = []
    n_objects = n_parts = 0
    try:
        for done, annotation in enumerate(iter_annotations(annotation_dir), start=1):
            image_path = find_image(image_dir, annotation.image_name)
            try:
                image = np.asarray(Image.open(image_path).convert("RGB"))
            except OSError as error:
                raise PascalPartFormatError(image_path, f"unreadable image: {error}") from None
            if image.shape[:2] != (annotation.height, annotation.width) and annotation.objects:
                raise PascalPartFormatError(
                    image_path,
                    f"image is {image.shape[1]}×{image.shape[0]} but its "
                    f"masks are {annotation.width}×{annotation.height}",
                )
            for obj in annotation.objects:
                if obj.class_name not in object_ids:
                    object_ids[obj.class_name] = writer.add_label(obj.class_name)
                for part in obj.parts:
                    if part.name not in part_ids:
                        part_ids[part.name] = writer.add_label(part.name)
            object_map = annotation.object_label_map()
            class_lut = np.zeros(len(annotation.objects) + 1, np.int32)
            for obj in annotation.objects:
                class_lut[obj.index + 1] = object_ids[obj.class_name]
            relative = writer.add_image(
                f"pascal/{annotation.image_id}",
                image,
                split=splits.get(annotation.image_id, default_split(annotation.image_id)),
                segmentations={"object": class_lut[object_map], "part": part_layers(annotation, part_ids)},
                segmentation_size=image.shape[:2],
            )
            dominant = dominant_class(annotation, object_map)
            if dominant is not None:
                image_classes.append((relative, dominant))
            for obj in annotation.objects:
                if obj.box is not None:
                    boxes.append(BoxRow(relative, "object", obj.class_name, obj.index, *obj.box, object=obj.index))
                    n_objects += 1
                instances: dict[str, int] = {}
                for part in obj.parts:
                    if part.box is None:
                        continue
                    instance = instances.get(part.name, 0)
                    instances[part.name] = instance + 1
                    boxes.append(BoxRow(relative, "part", part.name, instance, *part.box, object=obj.index))
                    n_parts += 1
            if progress is not None:
                progress(done, len(mat_files))
        writer.close()
        write_boxes(building / "boxes.csv", boxes)
        write_classes(building / CLASSES_FILE, image_classes)
        building.rename(out_dir)
    except BaseException:
        writer.abort()
        shutil.rmtree(building, ignore_errors=True)
        raise
    return ConversionSummary(str(out_dir), len(mat_files), n_objects, n_parts, tuple(object_ids), tuple(part_ids))
