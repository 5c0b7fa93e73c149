"""Sidecar files UnitScope keeps beside a Broden-format directory.

The Broden format has no instance boxes and no per-image class, which part detection (GG'18 §3) and
classification training need. Two CSV files carry them:

* ``boxes.csv``: ``image,kind,label,instance,x1,y1,x2,y2[,object]`` — one row per object or part
  instance; ``image`` as in ``index.csv``; ``kind`` is ``object`` or ``part``; ``label`` the concept
  name; boxes ``(x1, y1, x2, y2)`` in continuous image-pixel coordinates (torchvision convention,
  x2 one past the last covered column); optional ``object`` = the 0-based index of the object
  instance the box belongs to (itself for objects; 0 when absent, as in single-object images).
* ``classes.csv``: ``image,object_class`` — the one object class of each image, where images have one.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

BOXES_FILE = "boxes.csv"
CLASSES_FILE = "classes.csv"
BOX_COLUMNS = ("image", "kind", "label", "instance", "x1", "y1", "x2", "y2")
BOX_KINDS = ("object", "part")


class SidecarFormatError(ValueError):
    def __init__(self, path: str | os.PathLike[str], line: int | None, message: str) -> None:
        self.path, self.line, self.message = str(path), line, message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.path}, line {self.line}" if self.line is not None else self.path
        return f"{where}: {self.message}"

    def __reduce__(self):
        return (type(self), (self.path, self.line, self.message))


@dataclass(frozen=True)
class BoxRow:
    image: str
    kind: str
    label: str
    instance: int
    x1: float
    y1: float
    x2: float
    y2: float
    object: int = 0


def read_boxes(root: str | os.PathLike[str]) -> Iterator[BoxRow]:
    """Stream ``boxes.csv`` of a dataset directory, validating every row."""
    path = Path(root) / BOXES_FILE
    with open(path, newline="", encoding="utf-8-sig") as handle:  # a byte-order mark is not part of the header
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or tuple(header[: len(BOX_COLUMNS)]) != BOX_COLUMNS:
            raise SidecarFormatError(path, 1, f"header must start with {','.join(BOX_COLUMNS)}, got {header}")
        has_object = len(header) > len(BOX_COLUMNS) and header[len(BOX_COLUMNS)] == "object"
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise SidecarFormatError(path, line, f"expected {len(header)} fields, got {len(row)}")
            if row[1] not in BOX_KINDS:
                raise SidecarFormatError(path, line, f"kind must be object or part, got {row[1]!r}")
            try:
                x1, y1, x2, y2 = (float(value) for value in row[4:8])
                instance = int(row[3])
                owner = int(row[8]) if has_object else 0
            except ValueError as error:
                raise SidecarFormatError(path, line, f"not a number: {error}") from None
            if not (x2 > x1 and y2 > y1):
                raise SidecarFormatError(path, line, f"empty box ({x1}, {y1}, {x2}, {y2})")
            yield BoxRow(row[0], row[1], row[2], instance, x1, y1, x2, y2, owner)


def write_boxes(path: str | os.PathLike[str], rows: Iterable[BoxRow]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow([*BOX_COLUMNS, "object"])
        for row in rows:
            writer.writerow(
                [
                    row.image,
                    row.kind,
                    row.label,
                    row.instance,
                    *(_number(value) for value in (row.x1, row.y1, row.x2, row.y2)),
                    row.object,
                ]
            )


def read_classes(root: str | os.PathLike[str]) -> dict[str, str]:
    """``classes.csv`` as ``{image: object_class}``."""
    path = Path(root) / CLASSES_FILE
    classes: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:  # a byte-order mark is not part of the header
        reader = csv.reader(handle)
        header = next(reader, None)
        if header != ["image", "object_class"]:
            raise SidecarFormatError(path, 1, f"header must be image,object_class, got {header}")
        for line, row in enumerate(reader, start=2):
            if len(row) != 2 or not row[0] or not row[1]:
                raise SidecarFormatError(path, line, "expected two non-empty fields")
            if row[0] in classes:
                raise SidecarFormatError(path, line, f"image {row[0]!r} listed twice")
            classes[row[0]] = row[1]
    return classes


def write_classes(path: str | os.PathLike[str], classes: Iterable[tuple[str, str]]) -> None:
    """Write ``classes.csv`` from ``(image, object_class)`` pairs (images without a class are simply absent)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["image", "object_class"])
        writer.writerows(classes)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
