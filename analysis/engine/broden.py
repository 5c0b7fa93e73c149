"""Reader, validator and writer of the Broden on-disk dataset format (NetDissect's dataset builder).

Layout of a Broden directory ``root``::

    root/index.csv        image,split,ih,iw,sh,sw,<one column per category>
    root/category.csv     name,first,last,count,frequency
    root/label.csv        number,name,category,frequency,coverage,syns
    root/c_<cat>.csv      code,number,name,frequency,coverage        (one per category)
    root/images/...       images and label PNGs, referenced relative to ``images/``

Conventions used throughout this module:

* Label ids are the unified numbers of ``label.csv``; ``0`` means unlabeled. A label PNG stores the id
  of each pixel as ``R + 256 * G`` (blue is unused), so ids range over ``0..65535``.
* An ``index.csv`` category cell holds zero or more ``;``-separated entries, dominant first: a decimal
  integer is a whole-image label, anything else is a label-PNG file name relative to ``images/``.
  Several PNGs in one cell are layers of that category (``<name>_<cat>_<k>.png``, e.g. parts).
* Per-pixel label layers are returned as ``np.int32[L, sh, sw]`` at segmentation size ``(sh, sw)``,
  which may differ from the image size ``(ih, iw)`` (Broden uses half the image size).
* Statistics follow the Broden builder: a label's *frequency* in a category is the number of images
  in which it appears in that category; its *coverage* is the sum over those images of the fraction of
  the segmentation's pixels it covers (a whole-image label covers 1.0).
* Every parse error raises :class:`BrodenFormatError`, whose message names the file and the line.

Nothing here holds a whole dataset in memory: ``index.csv`` is streamed row by row and images and
masks are decoded one row at a time. Row ``n`` is reached by one seek through a byte-offset index
(:class:`BrodenRows`, 16 bytes per row) built by one pass over ``index.csv`` and cached beside it in
``index.csv.offsets.npz`` (rebuilt when the csv's size or modification time changes; kept in memory only
where the directory is read-only).
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TextIO

import numpy as np
from PIL import Image

__all__ = [
    "CATEGORY_COLUMNS",
    "CODE_COLUMNS",
    "INDEX_FIXED_COLUMNS",
    "LABEL_COLUMNS",
    "MAX_LABEL_ID",
    "UNLABELED",
    "BrodenCategory",
    "BrodenFormatError",
    "BrodenIndexRow",
    "BrodenLabel",
    "BrodenReader",
    "BrodenRows",
    "BrodenWriter",
    "CategoryCode",
    "CellEntries",
    "LabelStatistics",
    "ProgressCallback",
    "SegmentationEntry",
    "decode_label_png",
    "encode_label_png",
    "label_pixel_counts",
    "read_categories",
    "read_category_codes",
    "read_labels",
    "validate",
]

UNLABELED = 0
MAX_LABEL_ID = 255 + 256 * 255
INDEX_FIXED_COLUMNS: tuple[str, ...] = ("image", "split", "ih", "iw", "sh", "sw")
CATEGORY_COLUMNS: tuple[str, ...] = ("name", "first", "last", "count", "frequency")
LABEL_COLUMNS: tuple[str, ...] = ("number", "name", "category", "frequency", "coverage", "syns")
CODE_COLUMNS: tuple[str, ...] = ("code", "number", "name", "frequency", "coverage")

ProgressCallback = Callable[[int, int], None]
"""``progress(done, total)``: called with the number of rows processed so far and the total."""

_DECIMAL = re.compile(r"^[0-9]+$")
_CATEGORY_COUNT = re.compile(r"^([^()]+)\(([0-9]+)\)$")


class BrodenFormatError(ValueError):
    """A Broden directory does not follow the format.

    ``path`` is the offending file, ``line`` its 1-based physical line (the header is line 1) or
    ``None`` when the problem concerns the whole file (e.g. it is missing).
    """

    def __init__(self, path: str | os.PathLike[str], line: int | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}, line {self.line}"
        return f"{where}: {self.message}"

    def __reduce__(self):  # keep the three-argument constructor picklable (Celery, multiprocessing)
        return (type(self), (self.path, self.line, self.message))


# ------------------------------------------------------------------------------------------------
# Dataclasses


@dataclass(frozen=True)
class BrodenCategory:
    """One row of ``category.csv``.

    ``first``/``last`` are the smallest/largest label numbers used in the category (``None`` when the
    file leaves them empty), ``count`` the number of labels, ``frequency`` the sum over its labels of
    the number of images in which they appear in this category (the Broden builder's rule).
    """

    name: str
    first: int | None
    last: int | None
    count: int
    frequency: int


@dataclass(frozen=True)
class BrodenLabel:
    """One row of ``label.csv``.

    ``category_counts`` holds ``(category, n_images)`` pairs in file order (Broden writes them by
    decreasing count); ``frequency`` is their sum; ``coverage`` the summed pixel fraction over images.
    """

    number: int
    name: str
    category_counts: tuple[tuple[str, int], ...]
    frequency: int
    coverage: float
    syns: tuple[str, ...] = ()

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(category for category, _ in self.category_counts)


@dataclass(frozen=True)
class CategoryCode:
    """One row of ``c_<category>.csv``: dense per-category ``code`` (1-based) → unified ``number``."""

    category: str
    code: int
    number: int
    name: str
    frequency: int
    coverage: float


@dataclass(frozen=True)
class CellEntries:
    """The parsed content of one ``index.csv`` category cell, each kind in file (dominance) order."""

    mask_files: tuple[str, ...] = ()
    image_labels: tuple[int, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.mask_files and not self.image_labels


@dataclass(frozen=True, eq=False)
class BrodenIndexRow:
    """One data row of ``index.csv``; ``line`` is its physical line in the file (header = 1).

    ``image`` is relative to ``images/``; ``(ih, iw)`` is the image size and ``(sh, sw)`` the
    segmentation size; ``cells`` maps every category column to its entries.
    """

    line: int
    image: str
    split: str
    ih: int
    iw: int
    sh: int
    sw: int
    cells: Mapping[str, CellEntries]


@dataclass(frozen=True, eq=False)
class SegmentationEntry:
    """Labels of one category for one image.

    ``layers``: ``np.int32[L, sh, sw]`` per-pixel label ids (``L`` may be 0), dominant layer first.
    ``image_labels``: whole-image label ids, dominant first.
    """

    layers: np.ndarray
    image_labels: tuple[int, ...] = ()

    @property
    def has_labels(self) -> bool:
        """True if any pixel is labeled or any whole-image label is present."""
        return bool(self.image_labels) or bool(np.any(self.layers))

    def label_ids(self) -> np.ndarray:
        """Sorted unique nonzero label ids of the per-pixel layers and the whole-image labels."""
        ids = np.unique(self.layers)
        ids = np.union1d(ids[ids != UNLABELED], np.asarray(self.image_labels, dtype=np.int64))
        return ids.astype(np.int64)


@dataclass
class LabelStatistics:
    """Per-label counts gathered in one streaming pass over a dataset.

    ``category_image_counts[cat]``: images in which the label appears in category ``cat``.
    ``category_coverage[cat]``: sum over those images of the fraction of segmentation pixels it
    covers in ``cat`` (pixels covered by several layers count once; a whole-image label covers 1.0).
    ``category_pixel_counts[cat]``: labeled pixels at segmentation resolution (whole-image labels
    count every pixel). ``image_count``: distinct images in which the label appears in any category.
    """

    number: int
    image_count: int = 0
    category_image_counts: dict[str, int] = field(default_factory=dict)
    category_coverage: dict[str, float] = field(default_factory=dict)
    category_pixel_counts: dict[str, int] = field(default_factory=dict)

    @property
    def frequency(self) -> int:
        """Broden's ``label.csv`` frequency: the per-category image counts summed."""
        return sum(self.category_image_counts.values())

    @property
    def coverage(self) -> float:
        """Broden's ``label.csv`` coverage: the per-category coverages summed."""
        return float(sum(self.category_coverage.values()))


# ------------------------------------------------------------------------------------------------
# Label PNG encoding


def encode_label_png(labels: np.ndarray) -> np.ndarray:
    """Encode label ids ``int[H, W]`` (0..65535) as ``uint8[H, W, 3]`` with id = R + 256 * G, B = 0."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected a 2-D label map, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > MAX_LABEL_ID):
        raise ValueError(f"label ids must lie in 0..{MAX_LABEL_ID}")
    labels = labels.astype(np.int32, copy=False)
    rgb = np.zeros(labels.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = labels & 0xFF
    rgb[..., 1] = labels >> 8
    return rgb


def decode_label_png(rgb: np.ndarray) -> np.ndarray:
    """Decode ``uint8[H, W, 3|4]`` label pixels into ids ``np.int32[H, W]`` = R + 256 * G."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4):
        raise ValueError(f"expected an RGB(A) array, got shape {rgb.shape}")
    return rgb[..., 0].astype(np.int32) + 256 * rgb[..., 1].astype(np.int32)


def label_pixel_counts(layers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Count, for each nonzero label, the pixels it covers in at least one layer.

    ``layers``: ``int[L, H, W]`` (or ``int[H, W]``). Returns ``(ids int64[K], counts int64[K])`` with
    ids sorted ascending. A pixel carrying the same label in two layers counts once.
    """
    layers = np.asarray(layers)
    if layers.ndim == 2:
        layers = layers[None]
    if layers.shape[0] == 0 or layers.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if layers.shape[0] == 1:  # common case: a histogram is cheaper than sorting
        counts = np.bincount(layers.reshape(-1).astype(np.intp, copy=False))
        counts[UNLABELED] = 0
        ids = np.flatnonzero(counts)
        return ids.astype(np.int64), counts[ids].astype(np.int64)
    per_pixel = np.sort(layers.reshape(layers.shape[0], -1), axis=0)
    # After sorting each pixel's labels over layers, a repeat sits right under its first occurrence.
    first_occurrence = np.ones(per_pixel.shape, dtype=bool)
    first_occurrence[1:] = per_pixel[1:] != per_pixel[:-1]
    values = per_pixel[first_occurrence & (per_pixel != UNLABELED)]
    ids, counts = np.unique(values, return_counts=True)
    return ids.astype(np.int64), counts.astype(np.int64)


# ------------------------------------------------------------------------------------------------
# CSV parsing helpers


def _open_csv(path: Path) -> TextIO:
    """A CSV of the dataset as text; ``utf-8-sig`` so that a byte-order mark (spreadsheets write one) is read
    as what it is, not as part of the first header name."""
    if not path.is_file():
        raise BrodenFormatError(path, None, "file does not exist")
    return open(path, newline="", encoding="utf-8-sig")


def _check_header(path: Path, header: list[str] | None, required: Sequence[str]) -> dict[str, int]:
    """Map column name → position; raise if the header is empty, has duplicates or lacks a column."""
    if header is None:
        raise BrodenFormatError(path, 1, "file is empty (no header line)")
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise BrodenFormatError(path, 1, f"duplicate column(s) {', '.join(duplicates)}")
    missing = [name for name in required if name not in header]
    if missing:
        raise BrodenFormatError(path, 1, f"missing column(s) {', '.join(missing)}; expected {','.join(required)}")
    return {name: position for position, name in enumerate(header)}


def _check_width(path: Path, line: int, row: list[str], width: int) -> None:
    if len(row) != width:
        raise BrodenFormatError(path, line, f"expected {width} fields, found {len(row)}")


def _parse_int(path: Path, line: int, column: str, text: str, *, minimum: int = 0) -> int:
    text = text.strip()
    if not _DECIMAL.match(text):
        raise BrodenFormatError(path, line, f"column {column}: {text!r} is not a non-negative integer")
    value = int(text)
    if value < minimum:
        raise BrodenFormatError(path, line, f"column {column}: {value} is smaller than {minimum}")
    return value


def _parse_optional_int(path: Path, line: int, column: str, text: str) -> int | None:
    return None if not text.strip() else _parse_int(path, line, column, text)


def _parse_float(path: Path, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BrodenFormatError(path, line, f"column {column}: {text!r} is not a number") from None
    if not np.isfinite(value) or value < 0:
        raise BrodenFormatError(path, line, f"column {column}: {text!r} is not a non-negative number")
    return value


def read_categories(path: str | os.PathLike[str]) -> tuple[BrodenCategory, ...]:
    """Parse ``category.csv`` (file order kept). Raises :class:`BrodenFormatError`."""
    path = Path(path)
    categories: list[BrodenCategory] = []
    seen: set[str] = set()
    with _open_csv(path) as handle:
        reader = csv.reader(handle)
        columns = _check_header(path, next(reader, None), CATEGORY_COLUMNS)
        for row in reader:
            line = reader.line_num
            _check_width(path, line, row, len(columns))
            name = row[columns["name"]].strip()
            if not name:
                raise BrodenFormatError(path, line, "column name: empty category name")
            if name in seen:
                raise BrodenFormatError(path, line, f"category {name!r} listed twice")
            seen.add(name)
            categories.append(
                BrodenCategory(
                    name=name,
                    first=_parse_optional_int(path, line, "first", row[columns["first"]]),
                    last=_parse_optional_int(path, line, "last", row[columns["last"]]),
                    count=_parse_int(path, line, "count", row[columns["count"]]),
                    frequency=_parse_int(path, line, "frequency", row[columns["frequency"]]),
                )
            )
    return tuple(categories)


def _parse_category_counts(
    path: Path, line: int, text: str, known_categories: set[str] | None
) -> tuple[tuple[str, int], ...]:
    pairs: list[tuple[str, int]] = []
    for item in (part.strip() for part in text.split(";")):
        if not item:
            continue
        match = _CATEGORY_COUNT.match(item)
        if match is None:
            raise BrodenFormatError(path, line, f"column category: {item!r} is not of the form cat(n)")
        category, count = match.group(1).strip(), int(match.group(2))
        if known_categories is not None and category not in known_categories:
            raise BrodenFormatError(path, line, f"column category: {category!r} is not in category.csv")
        pairs.append((category, count))
    return tuple(pairs)


def read_labels(path: str | os.PathLike[str], known_categories: set[str] | None = None) -> dict[int, BrodenLabel]:
    """Parse ``label.csv`` into ``{number: BrodenLabel}`` (file order kept).

    Label numbers must be positive (0 is reserved for unlabeled) and unique. When
    ``known_categories`` is given, every category named in the ``category`` column must be in it.
    """
    path = Path(path)
    labels: dict[int, BrodenLabel] = {}
    with _open_csv(path) as handle:
        reader = csv.reader(handle)
        columns = _check_header(path, next(reader, None), LABEL_COLUMNS)
        for row in reader:
            line = reader.line_num
            _check_width(path, line, row, len(columns))
            number = _parse_int(path, line, "number", row[columns["number"]], minimum=1)
            if number > MAX_LABEL_ID:
                raise BrodenFormatError(path, line, f"column number: {number} exceeds {MAX_LABEL_ID}")
            if number in labels:
                raise BrodenFormatError(path, line, f"label number {number} listed twice")
            syns = tuple(s for s in (p.strip() for p in row[columns["syns"]].split(";")) if s)
            labels[number] = BrodenLabel(
                number=number,
                name=row[columns["name"]],
                category_counts=_parse_category_counts(path, line, row[columns["category"]], known_categories),
                frequency=_parse_int(path, line, "frequency", row[columns["frequency"]]),
                coverage=_parse_float(path, line, "coverage", row[columns["coverage"]]),
                syns=syns,
            )
    return labels


def read_category_codes(
    path: str | os.PathLike[str],
    category: str,
    known_labels: Mapping[int, BrodenLabel] | None = None,
) -> tuple[CategoryCode, ...]:
    """Parse ``c_<category>.csv``; codes must be unique and positive, numbers known when given."""
    path = Path(path)
    codes: list[CategoryCode] = []
    seen_codes: set[int] = set()
    with _open_csv(path) as handle:
        reader = csv.reader(handle)
        columns = _check_header(path, next(reader, None), CODE_COLUMNS)
        for row in reader:
            line = reader.line_num
            _check_width(path, line, row, len(columns))
            code = _parse_int(path, line, "code", row[columns["code"]], minimum=1)
            if code in seen_codes:
                raise BrodenFormatError(path, line, f"code {code} listed twice")
            seen_codes.add(code)
            number = _parse_int(path, line, "number", row[columns["number"]], minimum=1)
            if known_labels is not None and number not in known_labels:
                raise BrodenFormatError(path, line, f"label number {number} is not in label.csv")
            codes.append(
                CategoryCode(
                    category=category,
                    code=code,
                    number=number,
                    name=row[columns["name"]],
                    frequency=_parse_int(path, line, "frequency", row[columns["frequency"]]),
                    coverage=_parse_float(path, line, "coverage", row[columns["coverage"]]),
                )
            )
    return tuple(codes)


def _parse_cell(text: str) -> CellEntries:
    masks: list[str] = []
    image_labels: list[int] = []
    for entry in (part.strip() for part in text.split(";")):
        if not entry:
            continue
        if _DECIMAL.match(entry):
            image_labels.append(int(entry))
        else:
            masks.append(entry)
    return CellEntries(mask_files=tuple(masks), image_labels=tuple(image_labels))


# ------------------------------------------------------------------------------------------------
# Reader


OFFSETS_SUFFIX = ".offsets.npz"
"""The row index of ``index.csv`` is cached as ``index.csv.offsets.npz`` beside it."""


def _scan_row_offsets(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Byte offsets and physical line numbers of the data rows of csv file ``path``.

    Returns ``(offsets int64[N + 1], lines int64[N])``: row ``n`` is the bytes
    ``[offsets[n], offsets[n + 1])`` (a record may span physical lines inside quotes; a blank line
    between records is skipped, as :meth:`BrodenReader.rows` skips it) and ends on line ``lines[n]``
    (header = 1; what :meth:`BrodenReader.rows` reports). One buffered pass over the bytes.
    """
    starts: list[int] = []
    lines: list[int] = []
    position = 0
    line = 0
    open_quote = False
    record_start = -1
    with open(path, "rb") as handle:
        header = handle.readline()
        position, line = len(header), 1
        for raw in handle:
            line += 1
            if not open_quote:
                if raw.strip(b"\r\n") == b"":
                    position += len(raw)
                    continue
                record_start = position
            if raw.count(b'"') % 2:
                open_quote = not open_quote
            if not open_quote:
                starts.append(record_start)
                lines.append(line)  # csv.reader's line_num: the record's last physical line
            position += len(raw)
    offsets = np.empty(len(starts) + 1, dtype=np.int64)
    offsets[:-1] = starts
    offsets[-1] = position
    return offsets, np.asarray(lines, dtype=np.int64)


def _row_offsets(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_scan_row_offsets`, cached in ``<path>.offsets.npz`` keyed on the csv's size and mtime."""
    stat = path.stat()
    key = np.array([stat.st_size, stat.st_mtime_ns], dtype=np.int64)
    cache = path.with_name(path.name + OFFSETS_SUFFIX)
    try:
        with np.load(cache) as stored:
            if np.array_equal(stored["key"], key):
                return stored["offsets"], stored["lines"]
    except (OSError, KeyError, ValueError):
        pass  # absent, stale or damaged: rebuild
    offsets, lines = _scan_row_offsets(path)
    partial = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    try:
        with open(partial, "wb") as handle:
            np.savez(handle, key=key, offsets=offsets, lines=lines)
        os.replace(partial, cache)  # atomic: concurrent readers see the old file or the new one
    except OSError:  # a read-only dataset directory: keep the index in memory only
        partial.unlink(missing_ok=True)
    return offsets, lines


class BrodenRows(Sequence[BrodenIndexRow]):
    """The rows of ``index.csv`` by position (file order, blank lines skipped), without holding them.

    ``rows[n]`` seeks to row ``n``'s byte offset and parses that one record; memory is the offset
    index (16 bytes per row), not the rows. Iteration streams the file. Slices give lists.
    """

    def __init__(self, reader: BrodenReader, offsets: np.ndarray, lines: np.ndarray) -> None:
        self._reader = reader
        self._offsets = offsets
        self._lines = lines
        self._width = len(INDEX_FIXED_COLUMNS) + len(reader.index_categories)
        self._fd: int | None = None

    def __len__(self) -> int:
        return len(self._lines)

    def __getitem__(self, position):  # type: ignore[override]
        if isinstance(position, slice):
            return [self[k] for k in range(*position.indices(len(self)))]
        n = len(self)
        k = int(position)
        if k < 0:
            k += n
        if not 0 <= k < n:
            raise IndexError(f"row {position} is outside the {n} rows of {self._reader.index_path}")
        if self._fd is None:
            self._fd = os.open(self._reader.index_path, os.O_RDONLY)
        start, stop = int(self._offsets[k]), int(self._offsets[k + 1])
        # pread: no shared file position, so threads (mask prefetch) may look rows up concurrently
        text = os.pread(self._fd, stop - start, start).decode("utf-8")
        raw = next(csv.reader(io.StringIO(text, newline="")), [])
        return self._reader._parse_row(raw, int(self._lines[k]), self._width, self._reader.index_categories)

    def __iter__(self) -> Iterator[BrodenIndexRow]:
        return self._reader.rows()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()


class BrodenReader:
    """Read a Broden directory: small csvs eagerly, ``index.csv`` streamed.

    Construction parses ``category.csv``, ``label.csv``, every ``c_<cat>.csv`` and the header of
    ``index.csv``, raising :class:`BrodenFormatError` on the first problem. Rows, images and masks
    are read on demand, one at a time.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.images_dir = self.root / "images"
        self.index_path = self.root / "index.csv"
        self.categories: tuple[BrodenCategory, ...] = read_categories(self.root / "category.csv")
        category_names = {category.name for category in self.categories}
        self.labels: dict[int, BrodenLabel] = read_labels(self.root / "label.csv", category_names)
        self.codes: dict[str, tuple[CategoryCode, ...]] = {
            category.name: read_category_codes(self.root / f"c_{category.name}.csv", category.name, self.labels)
            for category in self.categories
        }
        self.index_categories: tuple[str, ...] = self._read_index_header(category_names)
        self._known_ids = np.array(sorted(self.labels), dtype=np.int64)
        self._category_order = {c.name: position for position, c in enumerate(self.categories)}
        self._code_coverage: dict[int, dict[str, float]] = {}
        for codes in self.codes.values():
            for code in codes:
                self._code_coverage.setdefault(code.number, {})[code.category] = code.coverage

    # -- metadata -----------------------------------------------------------------------------------

    def _read_index_header(self, category_names: set[str]) -> tuple[str, ...]:
        with _open_csv(self.index_path) as handle:
            header = next(csv.reader(handle), None)
        _check_header(self.index_path, header, INDEX_FIXED_COLUMNS)
        assert header is not None
        if tuple(header[: len(INDEX_FIXED_COLUMNS)]) != INDEX_FIXED_COLUMNS:
            raise BrodenFormatError(
                self.index_path,
                1,
                f"header must start with {','.join(INDEX_FIXED_COLUMNS)}, found {','.join(header[:6])}",
            )
        extra = header[len(INDEX_FIXED_COLUMNS) :]
        for name in extra:
            if name not in category_names:
                raise BrodenFormatError(self.index_path, 1, f"category column {name!r} is not in category.csv")
        return tuple(extra)

    def label_name(self, number: int) -> str:
        """Name of label ``number`` (``'-'`` for 0, Broden's unlabeled name)."""
        return "-" if number == UNLABELED else self.labels[number].name

    def primary_category(self, number: int) -> str | None:
        """The label's primary category, or ``None`` if it belongs to none.

        Rule (Broden's ``primary_categories_per_index``, made total): the category in which the
        label has the largest coverage according to ``c_<cat>.csv``; ties and categories without a
        ``c_`` entry are decided by the image count in ``label.csv``, then by ``category.csv`` order.
        """
        label = self.labels[number]
        if not label.category_counts:
            return None
        coverage = self._code_coverage.get(number, {})
        order = self._category_order
        return max(
            label.category_counts,
            key=lambda pair: (coverage.get(pair[0], -1.0), pair[1], -order.get(pair[0], 0)),
        )[0]

    def labels_in_category(self, category: str) -> tuple[int, ...]:
        """Label numbers of ``category`` in dense-code order (``c_<cat>.csv``)."""
        return tuple(code.number for code in sorted(self.codes[category], key=lambda c: c.code))

    # -- rows ---------------------------------------------------------------------------------------

    def rows(self, split: str | None = None) -> Iterator[BrodenIndexRow]:
        """Stream the rows of ``index.csv`` (optionally only one ``split``), in file order."""
        with _open_csv(self.index_path) as handle:
            reader = csv.reader(handle)
            header = next(reader)
            width = len(header)
            categories = self.index_categories
            for raw in reader:
                line = reader.line_num
                if not raw:
                    continue  # tolerate blank lines, e.g. a trailing empty line
                row = self._parse_row(raw, line, width, categories)
                if split is None or row.split == split:
                    yield row

    def __iter__(self) -> Iterator[BrodenIndexRow]:
        return self.rows()

    @cached_property
    def indexed_rows(self) -> BrodenRows:
        """All rows by position (``reader.indexed_rows[n]`` is one seek), built on first use."""
        return BrodenRows(self, *_row_offsets(self.index_path))

    def row(self, position: int) -> BrodenIndexRow:
        """Row ``position`` of ``index.csv`` (0 = first data row): one indexed lookup, not a scan."""
        return self.indexed_rows[position]

    def count_rows(self, split: str | None = None) -> int:
        """Number of data rows (from the row index; one pass over the file for a ``split``)."""
        if split is None:
            return len(self.indexed_rows)
        return sum(1 for _ in self.rows(split))

    def _parse_row(self, raw: list[str], line: int, width: int, categories: tuple[str, ...]) -> BrodenIndexRow:
        path = self.index_path
        _check_width(path, line, raw, width)
        image = raw[0].strip()
        if not image:
            raise BrodenFormatError(path, line, "column image: empty image name")
        split = raw[1].strip()
        if not split:
            raise BrodenFormatError(path, line, "column split: empty split")
        sizes = [
            _parse_int(path, line, name, raw[position], minimum=1)
            for position, name in enumerate(INDEX_FIXED_COLUMNS[2:], start=2)
        ]
        cells = {
            category: _parse_cell(raw[position])
            for position, category in enumerate(categories, start=len(INDEX_FIXED_COLUMNS))
        }
        return BrodenIndexRow(line, image, split, *sizes, cells=cells)

    # -- images and masks ---------------------------------------------------------------------------

    def image_path(self, row: BrodenIndexRow) -> Path:
        return self.images_dir / row.image

    def mask_path(self, mask_file: str) -> Path:
        return self.images_dir / mask_file

    def load_image(self, row: BrodenIndexRow) -> np.ndarray:
        """The row's image as ``np.uint8[ih, iw, 3]`` (RGB). Raises if unreadable or mis-sized."""
        path = self.image_path(row)
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB"))
        except FileNotFoundError:
            raise BrodenFormatError(self.index_path, row.line, f"image file {path} does not exist") from None
        except OSError as error:
            raise BrodenFormatError(self.index_path, row.line, f"image file {path} is unreadable ({error})") from None
        if array.shape[:2] != (row.ih, row.iw):
            raise BrodenFormatError(
                self.index_path,
                row.line,
                f"image file {path} is {array.shape[0]}x{array.shape[1]}, index says {row.ih}x{row.iw}",
            )
        return array

    def load_mask(self, row: BrodenIndexRow, mask_file: str) -> np.ndarray:
        """Decode one label PNG of ``row`` into ids ``np.int32[sh, sw]``."""
        path = self.mask_path(mask_file)
        try:
            with Image.open(path) as image:
                if image.mode == "P":
                    image = image.convert("RGB")
                if image.mode not in ("RGB", "RGBA"):
                    raise BrodenFormatError(
                        self.index_path,
                        row.line,
                        f"mask {path} has mode {image.mode}; label PNGs must be RGB (id = R + 256*G)",
                    )
                rgb = np.asarray(image)
        except FileNotFoundError:
            raise BrodenFormatError(self.index_path, row.line, f"mask file {path} does not exist") from None
        except BrodenFormatError:
            raise
        except OSError as error:
            raise BrodenFormatError(self.index_path, row.line, f"mask file {path} is unreadable ({error})") from None
        if rgb.shape[:2] != (row.sh, row.sw):
            raise BrodenFormatError(
                self.index_path,
                row.line,
                f"mask {path} is {rgb.shape[0]}x{rgb.shape[1]}, index says {row.sh}x{row.sw}",
            )
        return decode_label_png(rgb)

    def load_segmentation(self, row: BrodenIndexRow) -> dict[str, SegmentationEntry]:
        """Per category column: stacked layers ``np.int32[L, sh, sw]`` and whole-image label ids.

        Every category column of ``index.csv`` gets an entry (``L = 0`` and no image labels when
        the cell is empty), so callers can tell "no label of this category" from "unknown".
        """
        result: dict[str, SegmentationEntry] = {}
        for category in self.index_categories:
            cell = row.cells[category]
            if cell.mask_files:
                layers = np.stack([self.load_mask(row, name) for name in cell.mask_files])
            else:
                layers = np.zeros((0, row.sh, row.sw), dtype=np.int32)
            result[category] = SegmentationEntry(layers=layers, image_labels=cell.image_labels)
        return result

    # -- statistics ---------------------------------------------------------------------------------

    def label_statistics(
        self, progress: ProgressCallback | None = None, *, split: str | None = None
    ) -> dict[int, LabelStatistics]:
        """Per-label image counts and pixel coverage, per category, in one streaming pass.

        Returns an entry for every label of ``label.csv`` (zero counts when never seen).
        ``progress(done, total)`` is called after each row; ``total`` needs one extra cheap pass
        over ``index.csv`` and is computed only when a callback is given.
        """
        stats = {number: LabelStatistics(number=number) for number in self.labels}
        total = self.count_rows(split) if progress is not None else 0
        if progress is not None:
            progress(0, total)
        for done, row in enumerate(self.rows(split), start=1):
            seen_in_image: set[int] = set()
            pixels = row.sh * row.sw
            for category, entry in self.load_segmentation(row).items():
                counts = dict(zip(*(a.tolist() for a in label_pixel_counts(entry.layers))))
                for number in entry.image_labels:
                    counts[number] = pixels  # a whole-image label covers every pixel
                for number, count in counts.items():
                    if number not in stats:
                        raise BrodenFormatError(
                            self.index_path,
                            row.line,
                            f"label id {number} ({category}) is not in label.csv",
                        )
                    item = stats[number]
                    item.category_image_counts[category] = item.category_image_counts.get(category, 0) + 1
                    item.category_coverage[category] = item.category_coverage.get(category, 0.0) + count / pixels
                    item.category_pixel_counts[category] = item.category_pixel_counts.get(category, 0) + count
                    seen_in_image.add(number)
            for number in seen_in_image:
                stats[number].image_count += 1
            if progress is not None:
                progress(done, total)
        return stats

    # -- validation ---------------------------------------------------------------------------------

    def validate(self, progress: ProgressCallback | None = None, *, decode_masks: bool = True) -> int:
        """Check every row, its image and its masks; stop at the first problem. Returns the row count.

        Detects rows of the wrong width, non-integer or zero sizes, missing/unreadable images or
        images of the wrong size, missing/unreadable/mis-sized masks, and label ids (in masks or
        whole-image entries) absent from ``label.csv``. With ``decode_masks=False`` masks are only
        checked to exist, which is much faster. ``progress(done, total)`` is called per row.
        """
        total = self.count_rows()
        if progress is not None:
            progress(0, total)
        done = 0
        for row in self.rows():
            self._validate_row(row, decode_masks)
            done += 1
            if progress is not None:
                progress(done, total)
        return done

    def _validate_row(self, row: BrodenIndexRow, decode_masks: bool) -> None:
        image_path = self.image_path(row)
        if not image_path.is_file():
            raise BrodenFormatError(self.index_path, row.line, f"image file {image_path} does not exist")
        try:
            with Image.open(image_path) as image:  # reads the header only
                width, height = image.size
        except OSError as error:
            raise BrodenFormatError(
                self.index_path, row.line, f"image file {image_path} is unreadable ({error})"
            ) from None
        if (height, width) != (row.ih, row.iw):
            raise BrodenFormatError(
                self.index_path,
                row.line,
                f"image file {image_path} is {height}x{width}, index says {row.ih}x{row.iw}",
            )
        for category in self.index_categories:
            cell = row.cells[category]
            for number in cell.image_labels:
                if number not in self.labels:
                    raise BrodenFormatError(
                        self.index_path,
                        row.line,
                        f"column {category}: whole-image label {number} is not in label.csv",
                    )
            for mask_file in cell.mask_files:
                if not decode_masks:
                    if not self.mask_path(mask_file).is_file():
                        raise BrodenFormatError(
                            self.index_path,
                            row.line,
                            f"mask file {self.mask_path(mask_file)} does not exist",
                        )
                    continue
                ids = np.unique(self.load_mask(row, mask_file))
                ids = ids[ids != UNLABELED]
                unknown = ids[~np.isin(ids, self._known_ids)]
                if unknown.size:
                    raise BrodenFormatError(
                        self.index_path,
                        row.line,
                        f"column {category}: mask {self.mask_path(mask_file)} contains label id(s) "
                        f"{', '.join(str(i) for i in unknown[:5].tolist())} not in label.csv",
                    )


def validate(
    root: str | os.PathLike[str],
    progress: ProgressCallback | None = None,
    *,
    decode_masks: bool = True,
) -> int:
    """Validate the Broden directory ``root`` in one streaming pass; return the number of rows.

    Raises :class:`BrodenFormatError` (naming file and line) at the first problem: a missing csv,
    missing/duplicate columns, malformed values, category columns absent from ``category.csv``,
    missing or unreadable images and masks, and label ids absent from ``label.csv``.
    """
    return BrodenReader(root).validate(progress, decode_masks=decode_masks)


# ------------------------------------------------------------------------------------------------
# Writer


def _write_png(path: Path, array: np.ndarray, compress_level: int) -> None:
    """Deterministic PNG: Pillow, fixed compression level, no metadata chunks."""
    Image.fromarray(array).save(path, format="PNG", compress_level=compress_level)


@dataclass
class _LabelTally:
    """Running per-(label, category) image count and coverage, for the writer's csvs."""

    frequency: int = 0
    coverage: float = 0.0


class BrodenWriter:
    """Write a Broden directory incrementally, with deterministic bytes.

    Usage::

        with BrodenWriter(root, ["object", "part", "scene"]) as writer:
            car = writer.add_label("car")
            writer.add_image("probe/0001", rgb, split="train", segmentations={"object": mask},
                             image_labels={"scene": [street]})

    Choices (not fixed by the format):

    * Label numbers are assigned in ``add_label`` order from 1 (Broden numbers by decreasing
      frequency, which an incremental writer cannot know in advance). Labels that never occur are
      still listed in ``label.csv``, with an empty category cell.
    * ``index.csv`` rows are appended as images are added (stable order), so memory stays bounded.
    * Images are PNG (``images/<name>.png``); label layers are PNGs named like Broden's
      ``<name>_<cat>.png`` (one layer) or ``<name>_<cat>_<k>.png`` (k = 1..L). Layers with no labeled
      pixel are dropped. In a cell, mask files come before whole-image labels.
    * PNGs are written by Pillow with a fixed ``compress_level`` and no metadata; csv floats as
      ``%f`` (Broden's format); csv lines end in ``\\n``. Same inputs → identical bytes.
    * ``category.csv`` lists categories in constructor order; ``c_<cat>.csv`` orders codes by
      decreasing frequency, then coverage, then label number (Broden's order, made total).
    * With ``write_threads > 0``, PNG encoding and file writing run in that many background
      threads (Pillow and file I/O release the GIL), overlapping with the caller's work; at most
      ``16 * write_threads`` files are in flight. File contents do not depend on it; the first
      write error is raised by the next ``add_image`` or by ``close``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        categories: Sequence[str],
        *,
        compress_level: int = 1,
        write_threads: int = 0,
    ) -> None:
        self.root = Path(root)
        if (self.root / "index.csv").exists():
            raise FileExistsError(f"{self.root / 'index.csv'} already exists; refusing to overwrite")
        categories = tuple(categories)
        if len(set(categories)) != len(categories):
            raise ValueError(f"duplicate categories in {categories}")
        for name in categories:
            if not name or name in INDEX_FIXED_COLUMNS or any(c in name for c in ",;/\\()"):
                raise ValueError(f"invalid category name {name!r}")
        self.categories = categories
        self.compress_level = compress_level
        self._label_numbers: dict[str, int] = {}
        self._label_names: list[str] = ["-"]
        self._label_syns: list[tuple[str, ...]] = [()]
        self._tallies: dict[tuple[int, str], _LabelTally] = {}
        self._image_names: set[str] = set()
        self._closed = False
        self._pool = ThreadPoolExecutor(write_threads, "broden-writer") if write_threads > 0 else None
        self._pending: deque[Future[None]] = deque()
        self._max_pending = 16 * max(write_threads, 1)
        self._made_dirs: set[Path] = set()
        (self.root / "images").mkdir(parents=True, exist_ok=True)
        self._index_handle = open(self.root / "index.csv", "w", newline="", encoding="utf-8")  # noqa: SIM115 — closed by close()
        self._index = csv.writer(self._index_handle, lineterminator="\n")
        self._index.writerow(INDEX_FIXED_COLUMNS + categories)

    # -- vocabulary ---------------------------------------------------------------------------------

    def add_label(self, name: str, syns: Sequence[str] = ()) -> int:
        """Register a label name and return its number; an existing name returns its number."""
        if not name or name == "-":
            raise ValueError(f"invalid label name {name!r}")
        if name in self._label_numbers:
            return self._label_numbers[name]
        number = len(self._label_names)
        if number > MAX_LABEL_ID:
            raise ValueError(f"more than {MAX_LABEL_ID} labels")
        self._label_numbers[name] = number
        self._label_names.append(name)
        self._label_syns.append(tuple(syns))
        return number

    def label_number(self, name: str) -> int:
        return self._label_numbers[name]

    # -- images -------------------------------------------------------------------------------------

    def _save_png(self, array: np.ndarray, relative: str) -> None:
        """Write ``array`` (uint8[H, W, 3], not modified afterwards) as ``images/<relative>``."""
        path = self.root / "images" / relative
        if path.parent not in self._made_dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._made_dirs.add(path.parent)
        if self._pool is None:
            _write_png(path, array, self.compress_level)
            return
        self._pending.append(self._pool.submit(_write_png, path, array, self.compress_level))
        while len(self._pending) > self._max_pending or (self._pending and self._pending[0].done()):
            self._pending.popleft().result()  # re-raises a failed write

    def _drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def add_image(
        self,
        name: str,
        image: np.ndarray,
        *,
        split: str,
        segmentations: Mapping[str, np.ndarray] | None = None,
        image_labels: Mapping[str, Sequence[int]] | None = None,
        segmentation_size: tuple[int, int] | None = None,
    ) -> str:
        """Write one image with its labels and append its ``index.csv`` row.

        ``name``: path stem relative to ``images/`` (``.png`` is appended), unique in the dataset.
        ``image``: ``uint8[ih, iw, 3]``. ``segmentations[cat]``: label ids ``int[sh, sw]`` (one
        layer) or ``int[L, sh, sw]``, all categories at the same ``(sh, sw)``. ``image_labels[cat]``:
        whole-image label ids, dominant first. ``segmentation_size`` is needed only when there are no
        per-pixel labels (default: the image size). Returns the image path relative to ``images/``.
        """
        if self._closed:
            raise RuntimeError("writer is closed")
        segmentations = dict(segmentations or {})
        image_labels = {key: list(value) for key, value in (image_labels or {}).items()}
        for category in list(segmentations) + list(image_labels):
            if category not in self.categories:
                raise ValueError(f"unknown category {category!r}; writer has {self.categories}")
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be uint8[H, W, 3], got {image.dtype}{list(image.shape)}")
        relative = f"{name}.png"
        if relative in self._image_names or not name or "," in name or ";" in name:
            raise ValueError(f"invalid or duplicate image name {name!r}")
        ih, iw = image.shape[:2]

        layers_by_category: dict[str, np.ndarray] = {}
        seg_size: tuple[int, int] | None = None
        for category, layers in segmentations.items():
            layers = np.asarray(layers)
            if layers.ndim == 2:
                layers = layers[None]
            if layers.ndim != 3 or not np.issubdtype(layers.dtype, np.integer):
                raise ValueError(f"{category}: layers must be int[H, W] or int[L, H, W]")
            if layers.size and (layers.min() < UNLABELED or layers.max() > MAX_LABEL_ID):
                raise ValueError(f"{category}: label ids must lie in 0..{MAX_LABEL_ID}")
            if seg_size is None:
                seg_size = (int(layers.shape[1]), int(layers.shape[2]))
            elif layers.shape[1:] != seg_size:
                raise ValueError(f"{category}: layer size {layers.shape[1:]} differs from {seg_size}")
            layers_by_category[category] = layers
        if seg_size is None:
            seg_size = segmentation_size or (ih, iw)
        elif segmentation_size is not None and tuple(segmentation_size) != seg_size:
            raise ValueError(f"segmentation_size {segmentation_size} differs from layers {seg_size}")
        pixels = seg_size[0] * seg_size[1]

        cells: list[str] = []
        image_tallies: list[tuple[int, str, float]] = []
        stem = name
        for category in self.categories:
            entries: list[str] = []
            coverage: dict[int, float] = {}
            layers = layers_by_category.get(category)
            if layers is not None:
                layers = layers[np.any(layers != UNLABELED, axis=(1, 2))]  # drop empty layers
                ids, counts = label_pixel_counts(layers)
                self._check_ids(ids, category)
                coverage.update(zip(ids.tolist(), (counts / pixels).tolist()))
                for k in range(layers.shape[0]):
                    suffix = f"_{category}" if layers.shape[0] == 1 else f"_{category}_{k + 1}"
                    mask_name = f"{stem}{suffix}.png"
                    self._save_png(encode_label_png(layers[k]), mask_name)
                    entries.append(mask_name)
            whole = image_labels.get(category, [])
            self._check_ids(np.asarray(whole, dtype=np.int64), category)
            for number in whole:
                coverage[int(number)] = 1.0  # a whole-image label applies to every pixel
                entries.append(str(int(number)))
            cells.append(";".join(entries))
            image_tallies.extend((number, category, value) for number, value in sorted(coverage.items()))

        self._save_png(np.array(image, dtype=np.uint8, order="C", copy=True), relative)
        for number, category, value in image_tallies:
            tally = self._tallies.setdefault((number, category), _LabelTally())
            tally.frequency += 1
            tally.coverage += value
        self._image_names.add(relative)
        self._index.writerow([relative, split, ih, iw, seg_size[0], seg_size[1], *cells])
        return relative

    def _check_ids(self, ids: np.ndarray, category: str) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        bad = ids[(ids <= UNLABELED) | (ids >= len(self._label_names))]
        if bad.size:
            raise ValueError(f"{category}: label id(s) {bad[:5].tolist()} were not added with add_label")

    # -- finishing ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Finish ``index.csv`` and write ``category.csv``, ``label.csv`` and ``c_<cat>.csv``."""
        if self._closed:
            return
        self._closed = True
        try:
            self._drain()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._index_handle.close()
        self._write_label_csv()
        self._write_category_csvs()

    def abort(self) -> None:
        """Close files without writing the summary csvs (the directory is left invalid)."""
        if not self._closed:
            self._closed = True
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
            self._pending.clear()
            self._index_handle.close()

    def __enter__(self) -> BrodenWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _category_order(self) -> dict[str, int]:
        return {name: position for position, name in enumerate(self.categories)}

    def _write_label_csv(self) -> None:
        order = self._category_order()
        with open(self.root / "label.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(LABEL_COLUMNS)
            for number in range(1, len(self._label_names)):
                pairs = sorted(
                    ((category, tally) for (n, category), tally in self._tallies.items() if n == number),
                    key=lambda pair: (-pair[1].frequency, order[pair[0]]),
                )
                writer.writerow(
                    [
                        number,
                        self._label_names[number],
                        ";".join(f"{category}({tally.frequency})" for category, tally in pairs),
                        sum(tally.frequency for _, tally in pairs),
                        f"{sum(tally.coverage for _, tally in pairs):f}",
                        ";".join(self._label_syns[number]),
                    ]
                )

    def _write_category_csvs(self) -> None:
        with open(self.root / "category.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(CATEGORY_COLUMNS)
            for category in self.categories:
                numbers = sorted(n for (n, c) in self._tallies if c == category)
                writer.writerow(
                    [
                        category,
                        numbers[0] if numbers else "",
                        numbers[-1] if numbers else "",
                        len(numbers),
                        sum(self._tallies[(n, category)].frequency for n in numbers),
                    ]
                )
        for category in self.categories:
            numbers = sorted(
                (n for (n, c) in self._tallies if c == category),
                key=lambda n: (
                    -self._tallies[(n, category)].frequency,
                    -self._tallies[(n, category)].coverage,
                    n,
                ),
            )
            with open(self.root / f"c_{category}.csv", "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle, lineterminator="\n")
                writer.writerow(CODE_COLUMNS)
                for code, number in enumerate(numbers, start=1):
                    tally = self._tallies[(number, category)]
                    writer.writerow(
                        [
                            code,
                            number,
                            self._label_names[number],
                            tally.frequency,
                            f"{tally.coverage:f}",
                        ]
                    )
