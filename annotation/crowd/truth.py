"""What is true of a unit's images, and gold answers checked against it (issue 8).

Truth of a unit (ND'18 §3.1: "descriptive of most of the patches"): for each of its 15 top images, the concepts
under the map's peak — every label of every category at the peak pixel (objects, parts, materials, colours) plus
the image's whole-image labels (scenes, textures) — normalised with :func:`annotation.naming.normalise_concept_name`.
A concept is *true* of the unit when it lies under the peak in more than half of the images
(``fraction`` = 0.5, our reading of "most"), and *absent* when it lies under none.

Gold items and qualification questions (planned in :mod:`annotation.crowd.hits`) take their answers from this
truth, as does the simulated crowd (:mod:`annotation.crowd.simulation`); :func:`gold_check` and
:func:`worker_gold_accuracy` score workers' answers to them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from analysis.engine.broden import BrodenReader
from analysis.models import ExemplarKind, ExemplarSet

from ..common import peak_pixels
from ..models import CrowdAssignment, CrowdStudy, CrowdTaskKind, CrowdWorker, Hit, HitRole
from ..naming import normalise_concept_name

TRUTH_FRACTION = 0.5


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


# -- gold answers ----------------------------------------------------------------------------------------------


def gold_check(hit: Hit, fields: dict[str, Any]) -> bool:
    """Whether an answer to a gold (or qualification) HIT is right: the yes/no, or for descriptions a phrase
    that normalises to one of the accepted names."""
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
