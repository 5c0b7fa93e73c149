"""A simulated crowd, and the pixel truth that gold items and simulated workers read (issue 8).

Truth of a unit (ND'18 §3.1: "descriptive of most of the patches"): for each of its 15 top images, the concepts
under the map's peak — every label of every category at the peak pixel (objects, parts, materials, colours) plus
the image's whole-image labels (scenes, textures) — normalised with :func:`annotation.naming.normalise_concept_name`.
A concept is *true* of the unit when it lies under the peak in more than half of the images
(``fraction`` = 0.5, our reading of "most"), and *absent* when it lies under none.

Simulated workers answer through the real services (entry, qualification, the atomic claim, submissions with
gold feedback and blocking), each with a planted ``reliability`` r: with probability r the truthful answer,
otherwise a wrong one (validation: the other of yes/no; description: a random other concept with low
confidence; purity: a count off by a random amount). Each (worker, HIT) draws from
``numpy.random.default_rng([seed, worker_number, hit.position])``. Their workers and assignments are flagged
``simulated``. Purity counts are approximated from the unit's top-15 truth (the share of images whose peak
shows the unit's most common concept, times the number shown): the simulation reads no extra masks.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import numpy as np
from django.utils import timezone

from .models import CrowdAdapter, CrowdStudy, CrowdTaskKind, CrowdWorker, Hit, HitRole
from .naming import normalise_concept_name

DEFAULT_RELIABILITIES = (0.95, 0.92, 0.9, 0.85, 0.8, 0.75, 0.55)
"""The demo crowd: mostly careful workers and one poor one (whom the gold rule may block)."""
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
    from analysis.engine.broden import BrodenReader

    from .simulation import _peak_pixels

    layer, network, dataset = extraction.layer, extraction.layer.network, extraction.dataset
    reader = BrodenReader(dataset.root_dir)
    rows = list(reader.rows())
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
            (y, x), = _peak_pixels(layer, network, [position], row.ih, row.iw,
                                   (extraction.map_height, extraction.map_width))
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
    from analysis.models import ExemplarKind, ExemplarSet

    truth: dict[int, list[set[str]]] = {}
    for extraction in study.extractions.select_related("layer__network", "dataset"):
        unit_ids = set(study.hits.filter(extraction=extraction).values_list("unit_id", flat=True))
        sets = ExemplarSet.objects.filter(extraction=extraction, kind=ExemplarKind.TOP_OVERALL, unit_id__in=unit_ids)
        truth.update(peak_concepts(extraction, sets))
    return truth


def simulated_fields(hit: Hit, per_image: Sequence[set[str]], *, reliability: float, rng: np.random.Generator,
                     vocabulary: Sequence[str]) -> dict[str, Any]:
    """A simulated worker's answer to ``hit`` (keyword arguments of ``assignment_submit``)."""
    truthful = rng.random() < reliability
    truth = truth_concepts(per_image)
    if hit.kind == CrowdTaskKind.VALIDATION:
        yes = hit.gold_answer == "yes" if hit.role != HitRole.TASK else normalise_concept_name(hit.label) in truth
        return {"answer": "yes" if yes == truthful else "no"}
    if hit.kind == CrowdTaskKind.DESCRIPTION:
        if truthful and truth:
            return {"description": truth[0], "confidence": int(rng.integers(4, 6))}
        others = [name for name in vocabulary if name not in truth] or ["pattern"]
        return {"description": others[int(rng.integers(len(others)))], "confidence": int(rng.integers(1, 4))}
    shown = hit.purity_shown or 0
    counts = Counter(name for names in per_image for name in names)
    share = counts.most_common(1)[0][1] / len(per_image) if counts and per_image else 0.0
    count = int(round(share * shown))
    if not truthful:
        count += int(rng.integers(-shown // 2, shown // 2 + 1)) or 1
    return {"count": int(min(max(count, 0), shown))}


def crowd_simulate(*, study: CrowdStudy, reliabilities: Sequence[float] = DEFAULT_RELIABILITIES, seed: int = 0,
                   seconds: float = 9.0, truth: dict[int, list[set[str]]] | None = None) -> dict[str, Any]:
    """Let a simulated crowd (workers ``simulated-1`` …, one per reliability) work until no HIT is left for any
    of them: qualification, then HITs through the atomic claim, answered from the pixel truth. Idempotent: run
    again, it only does what is left. Time on task is drawn around ``seconds`` (log-normal) on a simulated clock
    that ends about now. Returns counts."""
    from .crowd_services import (assignment_submit, hit_next_for_worker, qualification_start, qualification_submit,
                                 worker_enter, worker_needs_qualification)

    truth = truth if truth is not None else study_unit_truth(study)
    vocabulary = sorted({name for sets in truth.values() for names in sets for name in names})
    qualification_truth = dict(study.hits.filter(role=HitRole.QUALIFICATION).values_list("token", "gold_answer"))
    # The simulated clock ends about now: it starts as long ago as the open places take the crowd to fill.
    open_places = sum(max(hit.max_assignments - hit.assigned_count, 0) for hit in
                      study.hits.filter(role=HitRole.TASK, retired=False).only("max_assignments", "assigned_count"))
    clock = timezone.now() - timedelta(seconds=open_places * seconds * (1 + study.gold_rate)
                                       / max(len(reliabilities), 1))
    workers: list[tuple[int, CrowdWorker, float]] = []
    for number, reliability in enumerate(reliabilities, start=1):
        worker, _ = worker_enter(study=study, adapter=CrowdAdapter.LINK, external_id=f"simulated-{number}",
                                 simulated=True, params={"reliability": float(reliability), "seed": seed})
        reliability = float(worker.params.get("reliability", reliability))
        rng = np.random.default_rng([seed, number, 0])
        while worker_needs_qualification(worker):
            attempt = qualification_start(worker=worker)
            if attempt is None:
                break
            answers = {token: (qualification_truth[token] if rng.random() < reliability else
                               ("no" if qualification_truth[token] == "yes" else "yes")) for token in attempt.questions}
            qualification_submit(attempt=attempt, answers=answers)
            worker.refresh_from_db()
        workers.append((number, worker, reliability))
    active = [entry for entry in workers if not worker_needs_qualification(entry[1])]
    submitted = 0
    while active:
        still = []
        for number, worker, reliability in active:
            assignment = hit_next_for_worker(worker=worker, now=clock)
            if assignment is None:
                continue
            hit = assignment.hit
            rng = np.random.default_rng([seed, number, hit.position])
            fields = simulated_fields(hit, truth.get(hit.unit_id, []), reliability=reliability, rng=rng,
                                      vocabulary=vocabulary)
            duration = float(np.exp(rng.normal(math.log(seconds), 0.4)))
            assignment_submit(assignment=assignment, shown_at=clock, now=clock + timedelta(seconds=duration),
                              **fields)
            clock += timedelta(seconds=duration / len(active))
            submitted += 1
            still.append((number, worker, reliability))
        active = still
    blocked = CrowdWorker.objects.filter(study=study, simulated=True, blocked=True).count()
    return {"study": study.name, "workers": len(workers), "submitted": submitted, "blocked": blocked}
