"""A simulated crowd (issue 8), answering from the pixel truth of :mod:`annotation.crowd.truth`.

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
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import numpy as np
from django.utils import timezone

from ..models import CrowdAdapter, CrowdStudy, CrowdTaskKind, CrowdWorker, Hit, HitRole
from ..naming import normalise_concept_name
from .services import (
    assignment_submit,
    hit_next_for_worker,
    qualification_start,
    qualification_submit,
    worker_enter,
    worker_needs_qualification,
)
from .truth import count_tolerance, study_unit_truth, truth_concepts

DEFAULT_RELIABILITIES = (0.95, 0.92, 0.9, 0.85, 0.8, 0.75, 0.55)
"""The demo crowd: mostly careful workers and one poor one (whom the gold rule may block)."""


def simulated_fields(
    hit: Hit, per_image: Sequence[set[str]], *, reliability: float, rng: np.random.Generator, vocabulary: Sequence[str]
) -> dict[str, Any]:
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


def crowd_simulate(
    *,
    study: CrowdStudy,
    reliabilities: Sequence[float] = DEFAULT_RELIABILITIES,
    seed: int = 0,
    seconds: float = 9.0,
    truth: dict[int, list[set[str]]] | None = None,
) -> dict[str, Any]:
    """Let a simulated crowd (workers ``simulated-1`` …, one per reliability) work until no HIT is left for any
    of them: qualification, then HITs through the atomic claim, answered from the pixel truth. Idempotent: run
    again, it only does what is left. Time on task is drawn around ``seconds`` (log-normal) on a simulated clock
    that ends about now. Returns counts."""
    truth = truth if truth is not None else study_unit_truth(study)
    vocabulary = sorted({name for sets in truth.values() for names in sets for name in names})
    questions = {hit.token: hit for hit in study.hits.filter(role=HitRole.QUALIFICATION)}
    # The simulated clock ends about now: it starts as long ago as the open places take the crowd to fill.
    open_places = sum(
        max(hit.max_assignments - hit.assigned_count, 0)
        for hit in study.hits.filter(role=HitRole.TASK, retired=False).only("max_assignments", "assigned_count")
    )
    clock = timezone.now() - timedelta(
        seconds=open_places * seconds * (1 + study.gold_rate) / max(len(reliabilities), 1)
    )
    workers: list[tuple[int, CrowdWorker, float]] = []
    for number, reliability in enumerate(reliabilities, start=1):
        worker, _ = worker_enter(
            study=study,
            adapter=CrowdAdapter.LINK,
            external_id=f"simulated-{number}",
            simulated=True,
            params={"reliability": float(reliability), "seed": seed},
        )
        reliability = float(worker.params.get("reliability", reliability))
        rng = np.random.default_rng([seed, number, 0])
        while worker_needs_qualification(worker):
            attempt = qualification_start(worker=worker)
            if attempt is None:
                break
            answers = {
                token: _qualification_answer(questions[token], right=rng.random() < reliability, rng=rng)
                for token in attempt.questions
            }
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
            fields = simulated_fields(
                hit, truth.get(hit.unit_id, []), reliability=reliability, rng=rng, vocabulary=vocabulary
            )
            duration = float(np.exp(rng.normal(math.log(seconds), 0.4)))
            assignment_submit(assignment=assignment, shown_at=clock, now=clock + timedelta(seconds=duration), **fields)
            clock += timedelta(seconds=duration / len(active))
            submitted += 1
            still.append((number, worker, reliability))
        active = still
    blocked = CrowdWorker.objects.filter(study=study, simulated=True, blocked=True).count()
    return {"study": study.name, "workers": len(workers), "submitted": submitted, "blocked": blocked}


def _qualification_answer(hit: Hit, *, right: bool, rng: np.random.Generator) -> str:
    """A simulated worker's answer to the qualification question ``hit`` (known answer ``hit.gold_answer``): yes/no
    flipped when wrong; for a description question (accepted names ``a|b``) the first name, or a phrase naming none
    of them; for a purity count question a count within the question's tolerance of the known one (a careful
    worker may be off by one too), or, when wrong, any count outside it."""
    truth = hit.gold_answer
    if hit.kind == CrowdTaskKind.PURITY:
        known, tolerance, shown = int(truth), count_tolerance(hit), hit.purity_shown or 0
        counts = [c for c in range(shown + 1) if (abs(c - known) <= tolerance) == right]
        return str(counts[int(rng.integers(len(counts)))] if counts else known)
    if truth in ("yes", "no"):
        return truth if right else ("no" if truth == "yes" else "yes")
    return truth.split("|")[0] if right else "something else entirely"
