"""PASCAL-Part annotations (Chen et al. 2014) as used by Gonzalez-Garcia et al. (GG'18).

File layout (``Annotations_Part/<image id>.mat``, read with :func:`scipy.io.loadmat`)::

    d["anno"][0, 0]                      struct with fields
        imname                           image name, e.g. "2008_000002"
        objects                          1 x n struct array, painting order (later occludes earlier)
            class                        VOC class name, e.g. "cow"
            class_ind                    1..20, VOC classes in alphabetical order (VOC_CLASSES)
            mask                         uint8[H, W], 1 on the object
            parts                        1 x m struct array (empty for boat, chair, diningtable,
                part_name                sofa, and for unannotated objects)
                mask                     uint8[H, W], 1 on the part (inside the object)

Conventions:

* Masks are returned as ``bool[H, W]``. Boxes are ``(x1, y1, x2, y2)`` in continuous pixel
  coordinates (torchvision.ops convention, area = (x2-x1)*(y2-y1)): a mask covering columns
  ``a..b`` and rows ``c..d`` inclusive has box ``(a, c, b + 1, d + 1)``. Boxes are fitted to the
  masks as annotated (GG'18 §3.2.1 "we fit a bounding-box to each part segmentation mask"), not to
  the parts left visible after occlusion by later objects.
* Part names are normalised as in GG'18 §3.2.1: fine-grained side/position distinctions and
  instance numbers are dropped (``lfleg`` → ``leg``, ``door_3`` → ``door``) and contiguous subparts
  of one larger part are merged (person upper + lower arm → one ``arm`` instance, cow front upper +
  lower leg → one ``leg`` instance). See :data:`PART_NAME_TABLE` and :func:`normalise_part_name`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io

__all__ = [
    "CLASSES_WITHOUT_PARTS",
    "GG18_MAX_RARE_COUNT",
    "GG18_MAX_TINY_EXTENT",
    "PART_NAME_TABLE",
    "POSITION_WORDS",
    "SUBPART_GROUP_TABLE",
    "VOC_CLASSES",
    "Box",
    "ObjectInstance",
    "PartInstance",
    "PartSizeAccumulator",
    "PartSizeStats",
    "PascalPartAnnotation",
    "PascalPartFormatError",
    "iter_annotations",
    "mask_to_box",
    "masks_to_boxes",
    "normalise_part_name",
    "part_instance_key",
    "rare_parts",
    "read_annotation",
    "select_parts",
    "tiny_parts",
]

Box = tuple[float, float, float, float]
"""``(x1, y1, x2, y2)`` in continuous pixel coordinates."""

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
"""``class_ind`` k (1-based) names ``VOC_CLASSES[k - 1]``."""

CLASSES_WITHOUT_PARTS = frozenset({"boat", "chair", "diningtable", "sofa"})

GG18_MAX_TINY_EXTENT = 15.0
"""GG'18 §3.2.1: a part class whose average of widths and heights is ≤ 15 px is discarded."""

GG18_MAX_RARE_COUNT = 10
"""GG'18 §3.2.1: a part class with ≤ 10 samples in train is discarded."""

POSITION_WORDS = frozenset({"left", "right", "front", "back", "upper", "lower"})
"""Words dropped by the generic rule (the Broden builder collapses the same adjectives)."""

_SIDES = ("l", "r")
_ENDS = ("f", "b")


def _build_part_name_table() -> dict[str, str]:
    """Raw PASCAL-Part short names (instance number removed) → normalised part names."""
    table = {
        # Unchanged single parts.
        **{
            name: name
            for name in (
                "head",
                "nose",
                "mouth",
                "hair",
                "torso",
                "neck",
                "muzzle",
                "tail",
                "beak",
                "body",
                "stern",
                "engine",
                "wheel",
                "saddle",
                "handlebar",
                "chainwheel",
                "headlight",
                "door",
                "window",
                "cap",
                "pot",
                "plant",
                "screen",
                "coach",
            )
        },
        "fwheel": "wheel",
        "bwheel": "wheel",
        "artifact_wing": "artifact wing",
        # Vehicle sides: front/back/left/right sides are one part "side"; the roof stays distinct.
        **{f"{where}side": "side" for where in ("front", "back", "left", "right")},
        "roofside": "roof",
        # Train: h = locomotive head, c = coach; same rule for their sides.
        **{f"h{where}side": "head side" for where in ("front", "back", "left", "right")},
        "hroofside": "head roof",
        **{f"c{where}side": "coach side" for where in ("front", "back", "left", "right")},
        "croofside": "coach roof",
        "leftmirror": "mirror",
        "rightmirror": "mirror",
        "fliplate": "license plate",
        "bliplate": "license plate",
    }
    for side in _SIDES:
        table[f"{side}eye"] = "eye"
        table[f"{side}ear"] = "ear"
        table[f"{side}ebrow"] = "eyebrow"
        table[f"{side}horn"] = "horn"
        table[f"{side}wing"] = "wing"
        table[f"{side}hand"] = "hand"
        table[f"{side}foot"] = "foot"
        table[f"{side}leg"] = "leg"  # bird legs
        for level in ("u", "l"):  # person upper / lower limbs: merged (GG'18)
            table[f"{side}{level}arm"] = "arm"
            table[f"{side}{level}leg"] = "leg"
        for end in _ENDS:
            table[f"{side}{end}leg"] = "leg"  # cat, dog
            table[f"{side}{end}pa"] = "paw"
            table[f"{side}{end}ho"] = "hoof"
            for level in ("u", "l"):  # cow, horse, sheep upper / lower legs: merged (GG'18)
                table[f"{side}{end}{level}leg"] = "leg"
    return table


PART_NAME_TABLE: dict[str, str] = _build_part_name_table()
"""Raw short name without ``_<n>`` → normalised name. Choices: upper and lower arm/leg merge into
``arm``/``leg`` (GG'18 §3.2.1 merges contiguous subparts); ``frontside``/``backside``/``leftside``/
``rightside`` → ``side`` and ``roofside`` → ``roof`` (train: ``head side``, ``head roof``,
``coach side``, ``coach roof``); ``fliplate``/``bliplate`` → ``license plate``; ``fwheel``/``bwheel``
→ ``wheel``; ``lebrow`` → ``eyebrow``."""


def _build_subpart_group_table() -> dict[str, str]:
    """Raw subpart name → name of the larger part instance it is merged into (GG'18 §3.2.1)."""
    table: dict[str, str] = {}
    for side in _SIDES:
        for level in ("u", "l"):
            table[f"{side}{level}arm"] = f"{side}arm"
            table[f"{side}{level}leg"] = f"{side}leg"
            for end in _ENDS:
                table[f"{side}{end}{level}leg"] = f"{side}{end}leg"
    return table


SUBPART_GROUP_TABLE: dict[str, str] = _build_subpart_group_table()
"""Raw upper/lower limb names → the limb instance they form together (``luarm``, ``llarm`` →
``larm``): one object's parts with the same group become one instance whose mask is their union."""

_INSTANCE_NUMBER = re.compile(r"_[0-9]+$")


def normalise_part_name(raw_name: str) -> str:
    """Normalise a PASCAL-Part short part name.

    Known names (:data:`PART_NAME_TABLE`, after removing a trailing ``_<n>``) map through the table.
    Generic rule for anything else: lower-case, drop a trailing instance number ``_<n>``, split on
    ``_`` and drop the position words of :data:`POSITION_WORDS`, join with spaces.
    """
    name = raw_name.strip().lower()
    base = _INSTANCE_NUMBER.sub("", name)
    if base in PART_NAME_TABLE:
        return PART_NAME_TABLE[base]
    words = [word for word in base.split("_") if word and word not in POSITION_WORDS]
    return " ".join(words) if words else base


def part_instance_key(raw_name: str) -> str | None:
    """The larger part instance a subpart is merged into (``luarm``, ``llarm`` → ``larm``), or None.

    Only upper/lower limbs merge; every other part struct entry is an instance of its own.
    """
    return SUBPART_GROUP_TABLE.get(raw_name.strip().lower())


# ------------------------------------------------------------------------------------------------
# Boxes


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight boxes of ``bool[N, H, W]`` masks as ``float64[N, 4]`` ``(x1, y1, x2, y2)``.

    A mask covering columns ``a..b`` and rows ``c..d`` inclusive gives ``(a, c, b + 1, d + 1)``;
    an empty mask gives a row of NaN.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"expected bool[N, H, W], got shape {masks.shape}")
    n, height, width = masks.shape
    rows = masks.any(axis=2)
    cols = masks.any(axis=1)
    boxes = np.full((n, 4), np.nan)
    present = rows.any(axis=1)
    boxes[present, 0] = cols[present].argmax(axis=1)
    boxes[present, 1] = rows[present].argmax(axis=1)
    boxes[present, 2] = width - cols[present][:, ::-1].argmax(axis=1)
    boxes[present, 3] = height - rows[present][:, ::-1].argmax(axis=1)
    return boxes


def mask_to_box(mask: np.ndarray) -> Box | None:
    """Tight box of a ``bool[H, W]`` mask (see :func:`masks_to_boxes`), ``None`` if empty."""
    box = masks_to_boxes(np.asarray(mask)[None])[0]
    return None if np.isnan(box[0]) else (float(box[0]), float(box[1]), float(box[2]), float(box[3]))


# ------------------------------------------------------------------------------------------------
# Annotations


class PascalPartFormatError(ValueError):
    """An ``Annotations_Part`` file is unreadable or does not have the expected layout."""

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        self.path = str(path)
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"

    def __reduce__(self):
        return (type(self), (self.path, self.message))


@dataclass(frozen=True, eq=False)
class PartInstance:
    """One part instance: normalised ``name``, the raw names merged into it, its mask and box."""

    name: str
    raw_names: tuple[str, ...]
    mask: np.ndarray  # bool[H, W]
    box: Box | None  # None when the mask is empty


@dataclass(frozen=True, eq=False)
class ObjectInstance:
    """One object; ``index`` is its 0-based painting order (later objects occlude earlier ones)."""

    index: int
    class_name: str
    class_index: int  # 1..20
    mask: np.ndarray  # bool[H, W], as annotated
    box: Box | None
    parts: tuple[PartInstance, ...]


@dataclass(frozen=True, eq=False)
class PascalPartAnnotation:
    """All objects and parts of one image (``image_id`` = file stem, ``image_name`` = ``imname``)."""

    image_id: str
    image_name: str
    height: int
    width: int
    objects: tuple[ObjectInstance, ...]

    def object_label_map(self) -> np.ndarray:
        """``int32[H, W]``: 1-based object index per pixel, 0 = background; later objects on top."""
        labels = np.zeros((self.height, self.width), dtype=np.int32)
        for obj in self.objects:
            labels[obj.mask] = obj.index + 1
        return labels

    def class_label_map(self) -> np.ndarray:
        """``int32[H, W]``: VOC ``class_ind`` per pixel (0 = background), later objects on top."""
        labels = np.zeros((self.height, self.width), dtype=np.int32)
        for obj in self.objects:
            labels[obj.mask] = obj.class_index
        return labels

    def visible_mask(self, object_index: int) -> np.ndarray:
        """``bool[H, W]``: the pixels of object ``object_index`` not covered by later objects."""
        return self.object_label_map() == object_index + 1

    def part_label_map(self, part_ids: Mapping[tuple[str, str], int]) -> np.ndarray:
        """``int32[H, W]`` of part ids painted with occlusion.

        ``part_ids[(class_name, part_name)]`` gives the id of a normalised part; parts not in the
        mapping are left 0. Objects are painted in order: each object first clears its own pixels
        (hiding parts of the objects it occludes), then paints its parts in file order.
        """
        labels = np.zeros((self.height, self.width), dtype=np.int32)
        for obj in self.objects:
            labels[obj.mask] = 0
            for part in obj.parts:
                part_id = part_ids.get((obj.class_name, part.name))
                if part_id:
                    labels[part.mask] = part_id
        return labels


def _text(value: object) -> str | None:
    """A MATLAB char array as loaded by loadmat (``array(['cat'])``), or None if it is not text."""
    array = np.asarray(value)
    if array.dtype.kind not in "US":
        return None
    if array.size == 0:
        return ""
    if array.size != 1:
        return None
    item = array.reshape(-1)[0]
    return item.decode() if isinstance(item, bytes) else str(item)


def _scalar_int(value: object) -> int | None:
    array = np.asarray(value)
    if array.size != 1 or array.dtype.kind not in "uif":
        return None
    number = array.reshape(-1)[0]
    return int(number) if float(number).is_integer() else None


def _require_fields(path: Path, array: np.ndarray, fields: Iterable[str], what: str) -> None:
    names = array.dtype.names or ()
    missing = [name for name in fields if name not in names]
    if missing:
        present = ", ".join(names) or "none"
        raise PascalPartFormatError(path, f"{what} lacks field(s) {', '.join(missing)} (has {present})")


def _mask(path: Path, value: object, shape: tuple[int, int] | None, what: str) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 2 or array.dtype.kind not in "uibf" or array.size == 0:
        raise PascalPartFormatError(
            path,
            f"{what}: mask is not a 2-D numeric array (shape {array.shape}, dtype {array.dtype})",
        )
    if shape is not None and array.shape != shape:
        raise PascalPartFormatError(
            path,
            f"{what}: mask is {array.shape[0]}x{array.shape[1]}, expected {shape[0]}x{shape[1]}",
        )
    return array > 0


def read_annotation(path: str | os.PathLike[str], *, merge_subparts: bool = True) -> PascalPartAnnotation:
    """Read one ``Annotations_Part/<id>.mat`` file.

    ``merge_subparts`` (default True, GG'18's choice): parts of one object sharing a
    :func:`part_instance_key` (upper + lower limb) become one instance with the union mask.
    Raises :class:`PascalPartFormatError` naming the file for unreadable or malformed files
    (missing fields, a ``class_ind`` outside 1..20 or inconsistent with ``class``, masks of the
    wrong shape or type).
    """
    path = Path(path)
    if not path.is_file():
        raise PascalPartFormatError(path, "file does not exist")
    try:
        data = scipy.io.loadmat(path, squeeze_me=False, struct_as_record=True)
    except Exception as error:  # scipy raises ValueError, TypeError, OSError... on corrupt files
        message = f"unreadable .mat file ({type(error).__name__}: {error})"
        raise PascalPartFormatError(path, message) from None
    if "anno" not in data:
        raise PascalPartFormatError(path, "no variable 'anno'")
    anno = np.asarray(data["anno"])
    if anno.dtype.names is None or anno.size != 1:
        raise PascalPartFormatError(path, "'anno' is not a 1x1 struct")
    _require_fields(path, anno, ("imname", "objects"), "anno")
    record = anno.reshape(-1)[0]
    image_name = _text(record["imname"])
    if image_name is None:
        raise PascalPartFormatError(path, "anno.imname is not a string")
    objects_array = np.asarray(record["objects"])
    objects: list[ObjectInstance] = []
    shape: tuple[int, int] | None = None
    if objects_array.size:
        if objects_array.dtype.names is None:
            raise PascalPartFormatError(path, "anno.objects is not a struct array")
        _require_fields(path, objects_array, ("class", "class_ind", "mask", "parts"), "anno.objects")
        for index, item in enumerate(objects_array.reshape(-1, order="F")):
            what = f"object {index + 1}"
            class_name = _text(item["class"])
            class_index = _scalar_int(item["class_ind"])
            if class_index is None or not 1 <= class_index <= len(VOC_CLASSES):
                raise PascalPartFormatError(path, f"{what}: class_ind {item['class_ind']!r} is not in 1..20")
            if class_name != VOC_CLASSES[class_index - 1]:
                raise PascalPartFormatError(
                    path,
                    f"{what}: class {class_name!r} does not match class_ind {class_index} "
                    f"({VOC_CLASSES[class_index - 1]})",
                )
            mask = _mask(path, item["mask"], shape, what)
            shape = mask.shape
            parts = _read_parts(path, item["parts"], shape, what, merge_subparts)
            objects.append(ObjectInstance(index, class_name, class_index, mask, mask_to_box(mask), parts))
    height, width = shape if shape is not None else (0, 0)
    return PascalPartAnnotation(path.stem, image_name, height, width, tuple(objects))


def _read_parts(
    path: Path, value: object, shape: tuple[int, int], what: str, merge_subparts: bool
) -> tuple[PartInstance, ...]:
    parts_array = np.asarray(value)
    if parts_array.size == 0:
        return ()  # boat, chair, diningtable, sofa and unannotated objects: [] or a 1x0 struct
    if parts_array.dtype.names is None:
        raise PascalPartFormatError(path, f"{what}: parts is not a struct array")
    _require_fields(path, parts_array, ("part_name", "mask"), f"{what} parts")
    groups: dict[str, list[tuple[str, np.ndarray]]] = {}
    for part_number, part in enumerate(parts_array.reshape(-1, order="F"), start=1):
        raw_name = _text(part["part_name"])
        if not raw_name:
            raise PascalPartFormatError(path, f"{what}, part {part_number}: part_name is not a string")
        mask = _mask(path, part["mask"], shape, f"{what}, part {part_number} ({raw_name})")
        group = part_instance_key(raw_name) if merge_subparts else None
        key = f"group:{group}" if group is not None else f"entry:{part_number}"
        groups.setdefault(key, []).append((raw_name, mask))
    instances = []
    for members in groups.values():  # dict keeps first-appearance order
        mask = np.logical_or.reduce([m for _, m in members])
        raw_names = tuple(name for name, _ in members)
        name = normalise_part_name(raw_names[0])
        instances.append(PartInstance(name, raw_names, mask, mask_to_box(mask)))
    return tuple(instances)


def iter_annotations(
    directory: str | os.PathLike[str],
    image_ids: Iterable[str] | None = None,
    *,
    merge_subparts: bool = True,
) -> Iterator[PascalPartAnnotation]:
    """Stream annotations from ``directory`` (``Annotations_Part``), sorted by image id.

    ``image_ids`` restricts to those ids (e.g. the VOC train list); a listed id without a file
    raises :class:`PascalPartFormatError`.
    """
    directory = Path(directory)
    if image_ids is None:
        paths = sorted(directory.glob("*.mat"))
    else:
        paths = [directory / f"{image_id}.mat" for image_id in sorted(set(image_ids))]
    for path in paths:
        yield read_annotation(path, merge_subparts=merge_subparts)


# ------------------------------------------------------------------------------------------------
# GG'18 part filters


@dataclass(frozen=True)
class PartSizeStats:
    """Size statistics of one part class ``(class_name, part_name)`` over a set of images.

    ``count``: number of samples = part instances with a non-empty mask (our reading of GG'18's
    "samples"); ``mean_width`` / ``mean_height``: mean box width / height in pixels.
    """

    class_name: str
    part_name: str
    count: int
    mean_width: float
    mean_height: float

    @property
    def mean_extent(self) -> float:
        """GG'18's size measure: the average of widths and heights, ``(mean_w + mean_h) / 2``."""
        return (self.mean_width + self.mean_height) / 2.0


class PartSizeAccumulator:
    """Streaming accumulator of :class:`PartSizeStats`: ``add`` annotations, then ``result``."""

    def __init__(self) -> None:
        self._sums: dict[tuple[str, str], list[float]] = {}

    def add(self, annotation: PascalPartAnnotation) -> None:
        for obj in annotation.objects:
            for part in obj.parts:
                if part.box is None:
                    continue
                x1, y1, x2, y2 = part.box
                sums = self._sums.setdefault((obj.class_name, part.name), [0, 0.0, 0.0])
                sums[0] += 1
                sums[1] += x2 - x1
                sums[2] += y2 - y1

    def result(self) -> dict[tuple[str, str], PartSizeStats]:
        return {
            key: PartSizeStats(key[0], key[1], int(n), width / n, height / n)
            for key, (n, width, height) in sorted(self._sums.items())
        }


def tiny_parts(
    stats: Mapping[tuple[str, str], PartSizeStats], max_mean_extent: float = GG18_MAX_TINY_EXTENT
) -> set[tuple[str, str]]:
    """Part classes whose average of widths and heights is ≤ ``max_mean_extent`` px (GG'18: 15)."""
    return {key for key, item in stats.items() if item.mean_extent <= max_mean_extent}


def rare_parts(
    stats: Mapping[tuple[str, str], PartSizeStats], max_count: int = GG18_MAX_RARE_COUNT
) -> set[tuple[str, str]]:
    """Part classes with ≤ ``max_count`` samples (GG'18: 10, e.g. bicycle headlight)."""
    return {key for key, item in stats.items() if item.count <= max_count}


def select_parts(
    stats: Mapping[tuple[str, str], PartSizeStats],
    *,
    max_mean_extent: float = GG18_MAX_TINY_EXTENT,
    max_count: int = GG18_MAX_RARE_COUNT,
) -> list[tuple[str, str]]:
    """The part classes GG'18 keeps: neither tiny nor rare, sorted by (class, part)."""
    dropped = tiny_parts(stats, max_mean_extent) | rare_parts(stats, max_count)
    return sorted(key for key in stats if key not in dropped)
