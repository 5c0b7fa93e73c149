"""What is true of a unit's images, and gold answers checked against it (issue 8).

Truth of a unit (ND'18 §3.1: "descriptive of most of the patches"): for each of its 15 top images, the concepts
under the map's peak — every label of every category at the peak pixel (objects, parts, materials, colours) plus
the image's whole-image labels (scenes, textures) — normalised with :func:`annotation.naming.normalise_concept_name`.
A concept is *true* of the unit when it lies under the peak in more than half of the images
(``fraction`` = 0.5, our reading of "most"), and *absent* when it lies under none.

Gold items and qualification questions (planned in :mod:`annotation.crowd.hits`) take their answers from this
truth, as does the simulated crowd (:mod:`annotation.crowd.simulation`); :func:`gold_check` and
:func:`worker_gold_accuracy` score workers' answers to them.

Purity studies qualify workers with count questions whose answer is known by construction: images with a marked
point on an object part (:func:`part_points` finds such points in the dataset's part masks), so many on one part
and the rest on other parts or on no part (planned in :mod:`annotation.crowd.hits`). A count is right within
:data:`~annotation.crowd.aggregation.PURITY_COUNT_TOLERANCE` of the known one (a HIT may carry its own
``source["tolerance"]``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis.engine.broden import BrodenReader
from analysis.models import ExemplarKind, ExemplarSet

from ..common import peak_pixels
from ..models import CrowdAssignment, CrowdStudy, CrowdTaskKind, CrowdWorker, Hit, HitRole
from ..naming import normalise_concept_name
from .aggregation import PURITY_COUNT_TOLERANCE

TRUTH_FRACTION = 0.5
PART_CATEGORY = "part"
PART_MIN_SHARE = 0.01
"""A part is marked only where its mask covers at least this share of the image (our choice: a speck is not a
region a worker can judge)."""


def truth_concepts(per_image: Sequence[set[str]], *, fraction: float = TRUTH_FRACTION) -> list[str]:
    """Concepts under the peak in more than ``fraction`` of the images, most frequent first (then by name)."""
    if not per_image:
        return []
    counts = Counter(name for names in per_image for name in set(names))
    needed = math.floor(fraction * len(per_image)) + 1
    return sorted((name for name, count in counts.items() if count >= needed), key=lambda n: (-counts[n], n))


def absent_concepts(per_image: Sequence[set[str]], names: Iterable[str]) -> list[str]:
    """``names`` under none of the peaks (sorted)."""
    present = set().union(*per_image) if per_image else set()
    return sorted(set(names) - present)


def peak_concepts(extraction, exemplar_sets) -> dict[int, list[set[str]]]:
    """``{unit_id: [normalised concept names under the peak of each image]}`` for top-overall exemplar sets."""
    layer, network, dataset = extraction.layer, extraction.layer.network, extraction.dataset
    reader = BrodenReader(dataset.root)
    rows = reader.indexed_rows
    names: dict[int, str] = {}

    def name(number: int) -> str:
        if number not in names:
            names[number] = normalise_concept_name(reader.label_name(int(number)))
        return names[number]

    # Where each image is looked at (segmentation pixels), so each image's masks are read once and not kept.
    wanted: dict[int, set[tuple[int, int]]] = {}
    lookups: dict[int, list[tuple[int, int, int]]] = {}
    for exemplar in exemplar_sets:
        points = []
        for index, position in zip(exemplar.image_indices, exemplar.peaks):
            row = rows[index]
            ((y, x),) = peak_pixels(
                layer, network, [position], row.ih, row.iw, (extraction.map_height, extraction.map_width)
            )
            pixel = (min(int(y * row.sh / row.ih), row.sh - 1), min(int(x * row.sw / row.iw), row.sw - 1))
            wanted.setdefault(index, set()).add(pixel)
            points.append((index, *pixel))
        lookups[exemplar.unit_id] = points
    found: dict[tuple[int, int, int], set[str]] = {}
    for index in sorted(wanted):
        segmentation = reader.load_segmentation(rows[index])
        for sy, sx in wanted[index]:
            here: set[str] = set()
            for entry in segmentation.values():
                here.update(name(value) for value in entry.layers[:, sy, sx] if value)
                here.update(name(value) for value in entry.image_labels if value)
            found[(index, sy, sx)] = here
    return {unit_id: [found[point] for point in points] for unit_id, points in lookups.items()}


def study_unit_truth(study: CrowdStudy) -> dict[int, list[set[str]]]:
    """Per-image peak concepts of every unit a study's HITs show."""
    truth: dict[int, list[set[str]]] = {}
    for extraction in study.extractions.select_related("layer__network", "dataset"):
        unit_ids = set(study.hits.filter(extraction=extraction).values_list("unit_id", flat=True))
        sets = ExemplarSet.objects.filter(extraction=extraction, kind=ExemplarKind.TOP_OVERALL, unit_id__in=unit_ids)
        truth.update(peak_concepts(extraction, sets))
    return truth


# -- marked points on object parts (purity count questions) ---------------------------------------------------


@dataclass(frozen=True)
class MarkedPoint:
    """A point of one dataset image: ``(y, x)`` as fractions of the image's height and width, and the
    normalised name of the object part under it (``""``: the point lies on no part)."""

    image: int
    y: float
    x: float
    part: str


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    """The pixel of a boolean ``mask[h, w]`` farthest from its edge (the image border counts as an edge), so a
    square drawn there sits inside the region: ``(row, column)``, the first in row-major order among equals."""
    from scipy.ndimage import distance_transform_edt  # local: scipy only where masks are read

    distance = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    row, column = np.unravel_index(int(np.argmax(distance)), mask.shape)
    return int(row), int(column)


def part_points(root, *, rng: np.random.Generator, max_images: int = 200) -> list[MarkedPoint]:
    """Marked points from the part masks of up to ``max_images`` images of the Broden dataset at ``root`` (drawn
    with ``rng``): per image, one point inside each object part covering at least :data:`PART_MIN_SHARE` of it
    (:func:`interior_point`), and one on no part at all (the pixel farthest from every part) where the image has
    such pixels. Empty when the dataset has no part masks. Raises ``BrodenFormatError`` when unreadable."""
    reader = BrodenReader(root)
    if PART_CATEGORY not in reader.index_categories:
        return []
    rows = reader.indexed_rows
    points: list[MarkedPoint] = []
    for index in sorted(int(i) for i in rng.permutation(len(rows))[:max_images]):
        row = rows[index]
        layers = reader.load_segmentation(row)[PART_CATEGORY].layers
        if not layers.size:
            continue
        labels = layers[0]  # the dominant layer: what the pixel shows first
        height, width = labels.shape
        for number in np.unique(labels[labels > 0]):
            mask = labels == number
            if mask.mean() >= PART_MIN_SHARE:
                y, x = interior_point(mask)
                name = normalise_concept_name(reader.label_name(int(number)))
                points.append(MarkedPoint(index, (y + 0.5) / height, (x + 0.5) / width, name))
        if (labels > 0).any() and not (layers > 0).any(axis=0).all():
            y, x = interior_point(~(layers > 0).any(axis=0))
            points.append(MarkedPoint(index, (y + 0.5) / height, (x + 0.5) / width, ""))
    return points


# -- gold answers ----------------------------------------------------------------------------------------------


def count_tolerance(hit: Hit) -> int:
    """How far a count may lie from a purity question's known count and still be right."""
    return int((hit.source or {}).get("tolerance", PURITY_COUNT_TOLERANCE))


def gold_check(hit: Hit, fields: dict[str, Any]) -> bool:
    """Whether an answer to a gold (or qualification) HIT is right: the yes/no; for descriptions a phrase that
    normalises to one of the accepted names; for purity counts a count within :func:`count_tolerance` of the
    known one."""
    if hit.kind == CrowdTaskKind.PURITY:
        try:
            return abs(int(fields["count"]) - int(hit.gold_answer)) <= count_tolerance(hit)
        except (KeyError, TypeError, ValueError):
            return False
    if hit.kind == CrowdTaskKind.DESCRIPTION:
        accepted = set(hit.gold_answer.split("|"))
        phrase = normalise_concept_name(fields["description"])
        return phrase in accepted or any(name in phrase.split() for name in accepted)
    return fields.get("answer") == hit.gold_answer


def worker_gold_accuracy(worker: CrowdWorker, *, visit: dict[str, str] | None = None) -> tuple[int, int]:
    """``(correct, answered)`` over the worker's gold items (only those of one platform ``visit``, as
    :func:`annotation.crowd.adapters.visit_filter` gives it, when one is named)."""
    rows = list(
        CrowdAssignment.objects.filter(
            worker=worker, hit__role=HitRole.GOLD, gold_correct__isnull=False, **(visit or {})
        ).values_list("gold_correct", flat=True)
    )
    return sum(rows), len(rows)
