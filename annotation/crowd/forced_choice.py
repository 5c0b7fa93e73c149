"""Forced-choice HITs (issue 17; Borowski et al. ICLR 2021, Zimmermann et al. NeurIPS 2023): which condition a
worker sees on a trial, what a trial page shows, and how an answer is read. Reads models only (the planning lives
in :mod:`annotation.crowd.forced_choice_plan`, the analysis in :mod:`annotation.crowd.forced_choice_report`).

Blindness: a page shows the two query images as "1" and "2" in the order ``ForcedChoiceTrial.strong_position``
fixed at planning (random, balanced); every image is a content-hash PNG; URLs carry only random tokens. Which query
is strong lives only in ``ForcedChoiceTrial`` rows (and, for catch and practice trials, ``Hit.gold_answer``).
"""

from __future__ import annotations

from typing import Any

from ..models import (
    FORCED_CHOICE_CONFIDENCE,
    FORCED_CHOICE_QUESTION,
    ConditionAssignment,
    CrowdTaskKind,
    CrowdWorker,
    ForcedChoiceCondition,
    ForcedChoiceReference,
    ForcedChoiceTrial,
    Hit,
)

ANSWERS = ("1", "2")
INSTRUCTIONS = (
    "Each trial is about one unit of a network. The images on one side make the unit respond strongly; the images "
    "on the other side make it respond weakly (on a phone: strong above, weak below). Look at the two images in "
    "the middle: one of them makes the unit respond strongly, the other weakly. Pick the strong one — click it or "
    "press 1 or 2 — and, if you like, say how sure you are (1 = a guess, 3 = sure). Some trials show no "
    "reference images: then go by your best guess. A few trials are easy checks. You start with practice trials "
    "that tell you the right answer."
)


def condition_for(*, worker: CrowdWorker, hit: Hit, trial: ForcedChoiceTrial) -> str:
    """The condition ``worker`` sees on ``hit``: the trial's own (between trials; catch and practice trials always
    show natural exemplars, so that their answer is obvious or teachable), or the worker's (between workers:
    the study's conditions in turn by the worker's arrival among the study's workers — balanced, no write)."""
    study = worker.study
    if trial.catch or trial.practice:
        return ForcedChoiceCondition.NATURAL
    if trial.condition:
        return trial.condition
    conditions = study.conditions or [ForcedChoiceCondition.NATURAL]
    if study.condition_assignment != ConditionAssignment.WORKERS:
        return conditions[0]
    arrival = CrowdWorker.objects.filter(study_id=study.pk, pk__lt=worker.pk).count()
    return conditions[arrival % len(conditions)]


def trial_context(*, hit: Hit, condition: str) -> dict[str, Any]:
    """What a forced-choice page shows: the references of ``condition`` (none for the baseline) and the two
    query pictures in their shown order. Never which query is strong, never ranks or scores."""
    trial = hit.fc_trial
    strong, weak = trial.strong_grid, trial.weak_grid
    queries = [strong, weak] if trial.strong_position == 1 else [weak, strong]
    reference = None
    if condition != ForcedChoiceCondition.NONE:
        reference = (
            ForcedChoiceReference.objects.select_related("top_grid", "bottom_grid")
            .filter(study_id=hit.study_id, unit_id=hit.unit_id, condition=condition)
            .first()
        )
    return {
        "hit_kind": CrowdTaskKind.FORCED_CHOICE,
        "question": FORCED_CHOICE_QUESTION,
        "fc_condition": condition,
        "fc_reference": reference,
        "fc_queries": [{"number": number, "grid": grid} for number, grid in enumerate(queries, start=1)],
        "fc_confidence": FORCED_CHOICE_CONFIDENCE,
        "overlay": condition == ForcedChoiceCondition.OVERLAY,
    }


def is_correct(*, trial: ForcedChoiceTrial, answer: str) -> bool:
    return answer == str(trial.strong_position)


def clean_answer(
    *, answer: str | None, confidence: int | str | None, client_ms: int | str | None
) -> dict[str, Any] | str:
    """The validated answer fields of a forced-choice HIT, or the error to show (a string)."""
    if answer not in ANSWERS:
        return "Pick image 1 or image 2."
    fields: dict[str, Any] = {"answer": answer, "confidence": None, "client_ms": None}
    if confidence not in (None, ""):
        try:
            fields["confidence"] = int(confidence)
        except (TypeError, ValueError):
            return "Confidence is 1, 2 or 3."
        if fields["confidence"] not in FORCED_CHOICE_CONFIDENCE:
            return "Confidence is 1, 2 or 3."
    if client_ms not in (None, ""):
        try:
            value = int(float(client_ms))
        except (TypeError, ValueError):
            value = -1
        fields["client_ms"] = value if 0 <= value < 24 * 3600 * 1000 else None  # a page's clock, not trusted
    return fields
