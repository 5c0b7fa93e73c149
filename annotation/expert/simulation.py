"""Simulated expert raters: the answer a careful expert would give, read from a dataset's pixel truth.

For a task (a unit's top-10 images of one class) the truth is found where the unit's map peaks — the
centre of the highlighted area and the green square of GG'18 Fig. 7 — applying the paper's rule that
the same concept must be covered in at least seven of the ten images:

* **part**: one part name whose boxes contain the peak in ≥ 7 of the 10 images (the most frequent;
  ties go to the part with the smaller boxes, the more specific one);
* **background**: else, the peak lies on no object pixel and on the same material in ≥ 7 images;
* **no**: otherwise.

A simulated rater gives the true answer, except with probability ``error_rate`` one of the four other
answers, uniformly (with a plausible name when that answer is a yes). Answers are reproducible: each
(rater, task) draws from ``numpy.random.default_rng([seed, rater_number, task_position])``.

:func:`true_answer` is pure; :func:`study_ground_truth` reads the study's dataset to feed it.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from analysis.engine.broden import BrodenReader
from analysis.models import AnnotatedBox

from ..common import peak_pixels
from ..models import ANSWER_ORDER, MIN_AGREEING_IMAGES, Answer

DEFAULT_ERROR_RATE = 0.1


@dataclass(frozen=True)
class PartBox:
    name: str
    x1: float
    y1: float
    x2: float
    y2: float

    def contains(self, x: float, y: float) -> bool:
        """``(x1, y1, x2, y2)`` image pixels, ``x2``/``y2`` one past the last covered pixel."""
        return self.x1 <= x < self.x2 and self.y1 <= y < self.y2

    @property
    def area(self) -> float:
        return (self.x2 - self.x1) * (self.y2 - self.y1)


@dataclass(frozen=True)
class PeakTruth:
    """What lies under one image's peak: the part boxes there and, off the object, the material."""

    parts: tuple[PartBox, ...]
    background: str | None


def true_answer(peaks: Sequence[PeakTruth], *, min_fraction: float = MIN_AGREEING_IMAGES / 10) -> tuple[str, str]:
    """``(answer, concept)`` for one task from what lies under its peaks (GG'18: 7 of 10 → 0.7)."""
    if not peaks:
        return Answer.NO, ""
    needed = math.ceil(min_fraction * len(peaks) - 1e-9)
    part_counts: Counter[str] = Counter()
    part_areas: dict[str, list[float]] = defaultdict(list)
    for peak in peaks:
        for name in {box.name for box in peak.parts}:
            part_counts[name] += 1
            part_areas[name].append(min(box.area for box in peak.parts if box.name == name))
    if part_counts:
        best = max(part_counts, key=lambda name: (part_counts[name], -float(np.mean(part_areas[name])), name))
        if part_counts[best] >= needed:
            return Answer.PART, best
    materials = Counter(peak.background for peak in peaks if peak.background)
    if materials:
        material, count = max(materials.items(), key=lambda pair: (pair[1], pair[0]))
        if count >= needed:
            return Answer.BACKGROUND, material
    return Answer.NO, ""


def simulated_answer(
    truth: tuple[str, str], *, error_rate: float, rng: np.random.Generator, wrong_names: Sequence[str]
) -> tuple[str, str]:
    """The true answer, or with probability ``error_rate`` another of the five, uniformly."""
    answer, concept = truth
    if rng.random() >= error_rate:
        return answer, concept
    others = [other for other in ANSWER_ORDER if other != answer]
    wrong = others[int(rng.integers(len(others)))]
    if wrong in (Answer.NO, Answer.NOT_SURE):
        return wrong, ""
    name = concept or (wrong_names[int(rng.integers(len(wrong_names)))] if wrong_names else "something")
    return wrong, name


# -- reading the truth of a study's dataset -------------------------------------------------------------


class _Segmentation:
    """Object and material label ids at segmentation resolution, per image, read on demand."""

    def __init__(self, dataset):
        self.reader = BrodenReader(dataset.root)
        self.rows = self.reader.indexed_rows
        self.categories = set(self.reader.index_categories)
        self.cache: dict[int, tuple[np.ndarray | None, np.ndarray | None]] = {}

    def layers(self, index: int, category: str) -> np.ndarray | None:
        row = self.rows[index]
        if category not in self.categories or not row.cells[category].mask_files:
            return None
        return np.stack([self.reader.load_mask(row, name) for name in row.cells[category].mask_files])

    def background_at(self, index: int, x: float, y: float) -> str | None:
        if index not in self.cache:
            self.cache[index] = (self.layers(index, "object"), self.layers(index, "material"))
        objects, materials = self.cache[index]
        if materials is None:
            return None
        row = self.rows[index]
        sy = min(int(y * row.sh / row.ih), row.sh - 1)
        sx = min(int(x * row.sw / row.iw), row.sw - 1)
        if objects is not None and objects[:, sy, sx].any():
            return None
        labels = [int(value) for value in materials[:, sy, sx] if value]
        return self.reader.label_name(labels[0]) if labels else None


def study_ground_truth(study) -> dict[int, tuple[str, str]]:
    """``{task id: (answer, concept)}`` for every task of a network study, from its dataset's truth."""
    extraction = study.extraction
    layer, network = extraction.layer, extraction.layer.network
    dataset = extraction.dataset
    tasks = list(study.tasks.filter(exemplar_set__isnull=False).select_related("exemplar_set"))
    needed = sorted({index for task in tasks for index in task.exemplar_set.image_indices})
    images = {image.index: image for image in dataset.images.filter(index__in=needed)}
    boxes: dict[int, list[PartBox]] = defaultdict(list)
    for image_index, name, x1, y1, x2, y2 in AnnotatedBox.objects.filter(
        image__dataset=dataset, image__index__in=needed, kind=AnnotatedBox.Kind.PART
    ).values_list("image__index", "concept__name", "x1", "y1", "x2", "y2"):
        boxes[image_index].append(PartBox(name, x1, y1, x2, y2))
    segmentation = _Segmentation(dataset)
    truth = {}
    for task in tasks:
        exemplar = task.exemplar_set
        peaks = []
        for index, position in zip(exemplar.image_indices, exemplar.peaks):
            image = images[index]
            ((y, x),) = peak_pixels(
                layer, network, [position], image.height, image.width, (extraction.map_height, extraction.map_width)
            )
            parts = tuple(box for box in boxes[index] if box.contains(x, y))
            peaks.append(PeakTruth(parts=parts, background=segmentation.background_at(index, x, y)))
        truth[task.pk] = true_answer(peaks)
    return truth
