"""A simulated crowd for forced-choice studies (issue 17), answering through the real services (entry, practice,
the atomic claim, submissions with catch feedback and blocking), flagged ``simulated``.

Each unit has a planted readability ``r_u`` in [0.5, 1] (seeded, or given): an attentive worker of skill ``s``
picks the strong query with probability ``0.5 + (r_u − 0.5) · s · g_c``, where ``g_c`` is the condition's planted
gain (:data:`CONDITION_GAIN`: natural and overlay exemplars 1, non-extremal 0.7, no references 0.15 — our
simulation's effects, in the order Borowski et al. and Zimmermann et al. found). Catch trials are right with
probability 0.97 for attentive workers. A "careless" worker (skill 0) answers at random in about 0.5 s: the
analysis should exclude them by catch accuracy or response time. Each (worker, HIT) draws from
``numpy.random.default_rng([seed, worker_number, hit.position])``; the planted readabilities are kept in
``CrowdStudy.trial_params["simulation"]`` so a report can be checked against them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import numpy as np
from django.utils import timezone

from ..models import CrowdAdapter, CrowdStudy, CrowdWorker, ForcedChoiceCondition, HitRole
from .forced_choice import condition_for
from .services import (
    assignment_submit,
    hit_next_for_worker,
    practice_answer,
    qualification_start,
    worker_enter,
    worker_needs_qualification,
)

CONDITION_GAIN = {
    ForcedChoiceCondition.NATURAL: 1.0,
    ForcedChoiceCondition.OVERLAY: 1.0,
    ForcedChoiceCondition.NON_EXTREMAL: 0.7,
    ForcedChoiceCondition.NONE: 0.15,
}
DEFAULT_SKILLS = (1.0, 0.95, 0.9, 0.9, 0.85, 0.8, 0.0)
"""The demo crowd: attentive workers of slightly different skill, and one careless worker (skill 0)."""


def planted_readability(unit_ids: Sequence[int], *, seed: int) -> dict[int, float]:
    """A seeded readability per unit, uniform in [0.5, 1]."""
    rng = np.random.default_rng([seed, 17])
    return {int(unit): float(0.5 + 0.5 * rng.random()) for unit in sorted(unit_ids)}


def forced_choice_simulate(
    *,
    study: CrowdStudy,
    skills: Sequence[float] = DEFAULT_SKILLS,
    seed: int = 0,
    seconds: float = 3.5,
    readability: dict[int, float] | None = None,
) -> dict[str, Any]:
    """Let a simulated crowd (``fc-simulated-1`` …, one per skill) work until nothing is left for any of them.
    Idempotent (run again, it does only what is left). Returns counts and the planted readabilities."""
    units = sorted(set(study.hits.filter(role=HitRole.TASK).values_list("unit_id", flat=True)))
    stored = (study.trial_params or {}).get("simulation", {}).get("readability")
    if readability is None:
        readability = {int(k): v for k, v in stored.items()} if stored else planted_readability(units, seed=seed)
    study.trial_params = {
        **(study.trial_params or {}),
        "simulation": {
            "readability": {str(k): v for k, v in readability.items()},
            "condition_gain": CONDITION_GAIN,
            "skills": list(skills),
            "seed": seed,
        },
    }
    study.save(update_fields=["trial_params"])
    open_places = sum(
        max(h.max_assignments - h.assigned_count, 0)
        for h in study.hits.filter(role=HitRole.TASK, retired=False).only("max_assignments", "assigned_count")
    )
    clock = timezone.now() - timedelta(seconds=open_places * seconds * (1 + study.gold_rate) / max(len(skills), 1))
    active = []
    for number, skill in enumerate(skills, start=1):
        worker, _ = worker_enter(
            study=study,
            adapter=CrowdAdapter.LINK,
            external_id=f"fc-simulated-{number}",
            simulated=True,
            params={"skill": float(skill), "seed": seed},
        )
        rng = np.random.default_rng([seed, number, 0])
        while worker_needs_qualification(worker):  # the practice trials, answered like real ones
            attempt = qualification_start(worker=worker)
            if attempt is None:
                break
            for token in [t for t in attempt.questions if t not in attempt.answers]:
                practice_answer(attempt=attempt, token=token, answer=str(rng.integers(1, 3)))
            worker.refresh_from_db()
        active.append((number, worker, float(skill)))
    submitted = 0
    while active:
        still = []
        for number, worker, skill in active:
            assignment = hit_next_for_worker(worker=worker, now=clock)
            if assignment is None:
                continue
            hit = assignment.hit
            trial = hit.fc_trial
            rng = np.random.default_rng([seed, number, hit.position])
            if skill <= 0:
                right, duration = rng.random() < 0.5, float(np.exp(rng.normal(math.log(0.5), 0.2)))
            else:
                if trial.catch:
                    p = 0.97
                else:
                    gain = CONDITION_GAIN[condition_for(worker=worker, hit=hit, trial=trial)]
                    p = 0.5 + (readability.get(hit.unit_id, 0.75) - 0.5) * skill * gain
                right, duration = rng.random() < p, float(np.exp(rng.normal(math.log(seconds), 0.35)))
            answer = str(trial.strong_position if right else 3 - trial.strong_position)
            assignment_submit(
                assignment=assignment,
                answer=answer,
                confidence=int(rng.integers(1, 4)),
                shown_at=clock,
                now=clock + timedelta(seconds=duration),
            )
            clock += timedelta(seconds=duration / len(active))
            submitted += 1
            still.append((number, worker, skill))
        active = still
    blocked = CrowdWorker.objects.filter(study=study, simulated=True, blocked=True).count()
    return {
        "study": study.name,
        "workers": len(skills),
        "submitted": submitted,
        "blocked": blocked,
        "readability": readability,
    }
