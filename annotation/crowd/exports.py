"""Researchers' exports of a crowd study (votes, descriptions, purity counts): every assignment with full
provenance, and the aggregated results per HIT. Reads only; the site's download view and the API both use these
functions, so a file downloaded from either is the same."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any

from analysis.models import ExplanatoryGraph

from ..common import iso, rows_csv, simulated_check
from ..models import RAW_FILTER_PEAKS, CrowdAdapter, CrowdAssignment, CrowdTaskKind, Hit, HitRole
from .adapters import HANDED_IN, session_completion_code
from .aggregation import answers_frame, majority_vote
from .selectors import canonical_description

CROWD_ANSWER_FIELDS = (
    "assignment",
    "study",
    "hit",
    "hit_token",
    "hit_kind",
    "hit_role",
    "network",
    "layer",
    "unit",
    "label",
    "label_origin",
    "validation_round",
    "label_category",
    "grid_sha256",
    "worker",
    "worker_adapter",
    "worker_external_id",
    "worker_simulated",
    "user",
    "state",
    "answer",
    "description",
    "confidence",
    "count",
    "pasted",
    "gold_correct",
    "leased_at",
    "shown_at",
    "submitted_at",
    "seconds",
    "returned_at",
    "reason",
    "reviewed_by",
    "reviewed_at",
    "external_assignment_id",
    "external_hit_id",
    "external_session",
    "pattern_source",
    "pattern",
    "graph",
    "graph_category",
    "purity_k",
    "purity_shown",
    "completion_code",
)
"""Columns of a crowd study's raw answers export: every assignment (leased, returned, submitted, approved,
rejected; task, gold and qualification HITs), with the HIT it answered (kind, role, unit, label and — for
researchers only — the label's origin and, for validation, the ND'18 round whose votes it gives), the worker
(adapter, external id, simulated), the answer by kind, times, seconds on task, review, and the platform's hand-off
ids. Purity HITs say what they showed (:func:`pattern_of`): ``pattern_source`` (``raw_filter_peaks``: a filter's
top images by map maximum; ``explanatory_graph``: a graph node's top inferences), ``pattern`` (``layer/filter`` or
``layer/filter/node``), the ``graph`` (its run id) and ``graph_category`` (the graph's object category; a run
learns one graph per category, so the pair names the graph; blank for a pooled graph), ``purity_k`` (the 30%-mass
K) and ``purity_shown``, so the purity table can be recomputed from the export. ``completion_code``: on a Prolific
session that earned one, the session's own code, to match against Prolific's submissions."""


CROWD_RESULT_FIELDS = (
    "hit",
    "hit_kind",
    "network",
    "layer",
    "unit",
    "label",
    "label_origin",
    "validation_round",
    "label_category",
    "answers",
    "n_yes",
    "n_no",
    "majority",
    "majority_share",
    "tied",
    "canonical_description",
    "canonical_agreed",
    "mean_count",
    "purity_shown",
    "purity_k",
    "pattern_source",
    "pattern",
    "graph",
    "graph_category",
)
"""Columns of a crowd study's aggregated results: per task HIT, the answers that count (submitted or approved)."""


def pattern_of(hit: Hit) -> dict[str, Any]:
    """What a purity HIT showed: ``{"pattern_source", "pattern", "graph", "graph_category", "purity_k",
    "purity_shown"}`` (all None for other kinds). ``pattern`` is ``layer/filter`` for a raw filter,
    ``layer/filter/node`` for a graph node; ``graph`` is the graph's run and ``graph_category`` its category."""
    if hit.kind != CrowdTaskKind.PURITY:
        return {
            "pattern_source": None,
            "pattern": None,
            "graph": None,
            "graph_category": None,
            "purity_k": None,
            "purity_shown": None,
        }
    source = hit.source or {}
    kind = source.get("pattern_source", RAW_FILTER_PEAKS)
    pattern = source.get("pattern")
    if kind == RAW_FILTER_PEAKS and hit.unit_id:  # older HITs named the unit by its row id
        pattern = f"{hit.unit.layer.name}/{hit.unit.index}"
    graph = source.get("graph")
    row = ExplanatoryGraph.objects.filter(pk=graph).values_list("run_id", "category").first() if graph else None
    return {
        "pattern_source": kind,
        "pattern": pattern,
        "purity_k": hit.purity_k,
        "purity_shown": hit.purity_shown,
        "graph": row[0] if row else None,
        "graph_category": row[1] if row else None,
    }


def crowd_answer_rows(study) -> list[dict[str, Any]]:
    """Every assignment of crowd ``study`` as a dict of :data:`CROWD_ANSWER_FIELDS`, in lease order."""
    assignments = (
        CrowdAssignment.objects.filter(hit__study=study)
        .select_related("hit__unit__layer__network", "hit__grid", "worker", "reviewed_by")
        .order_by("leased_at", "id")
    )
    earned = {
        session
        for session, count in Counter(
            assignments.filter(worker__adapter=CrowdAdapter.PROLIFIC, state__in=HANDED_IN)
            .exclude(external_session="")
            .values_list("external_session", flat=True)
        ).items()
        if count >= study.hits_per_session
    }
    rows, patterns = [], {}
    for assignment in assignments:
        hit, worker = assignment.hit, assignment.worker
        unit = hit.unit
        rows.append(
            {
                "assignment": assignment.pk,
                "study": study.pk,
                "hit": hit.pk,
                "hit_token": hit.token,
                "hit_kind": hit.kind,
                "hit_role": hit.role,
                "network": unit.layer.network.name if unit else None,
                "layer": unit.layer.name if unit else None,
                "unit": unit.index if unit else None,
                "label": hit.label,
                "label_origin": hit.label_origin,
                "validation_round": hit.validation_round,
                "label_category": hit.label_category,
                "grid_sha256": hit.grid.sha256 if hit.grid_id else None,
                "worker": worker.pk,
                "worker_adapter": worker.adapter,
                "worker_external_id": worker.external_id,
                "worker_simulated": worker.simulated,
                "user": worker.user_id,
                "state": assignment.state,
                "answer": assignment.answer,
                "description": assignment.description,
                "confidence": assignment.confidence,
                "count": assignment.count,
                "pasted": assignment.pasted,
                "gold_correct": assignment.gold_correct,
                "leased_at": iso(assignment.leased_at),
                "shown_at": iso(assignment.shown_at),
                "submitted_at": iso(assignment.submitted_at),
                "seconds": assignment.seconds,
                "returned_at": iso(assignment.returned_at),
                "reason": assignment.reason,
                "reviewed_by": assignment.reviewed_by.get_username() if assignment.reviewed_by_id else None,
                "reviewed_at": iso(assignment.reviewed_at),
                "external_assignment_id": assignment.external_assignment_id,
                "external_hit_id": assignment.external_hit_id,
                "external_session": assignment.external_session,
                **patterns.setdefault(hit.pk, pattern_of(hit)),
                "completion_code": (
                    session_completion_code(study, assignment.external_session)
                    if assignment.external_session in earned
                    else None
                ),
            }
        )
    return rows


def crowd_results(study, *, simulated: str = "exclude") -> list[dict[str, Any]]:
    """Per task HIT of crowd ``study``, its counted answers (submitted or approved; ``simulated`` as for expert
    studies): validation yes/no counts and the majority (:func:`annotation.crowd.aggregation.majority_vote`, ties
    flagged), a description HIT's canonical description (:func:`annotation.crowd.selectors.canonical_description`),
    a purity HIT's mean count over the images shown."""
    simulated_check(simulated)
    answered = CrowdAssignment.objects.answered().tasks().filter(hit__study=study).order_by("submitted_at", "id")
    if simulated == "exclude":
        answered = answered.filter(worker__simulated=False)
    elif simulated == "only":
        answered = answered.filter(worker__simulated=True)
    by_hit: dict[int, list] = defaultdict(list)
    for assignment in answered:
        by_hit[assignment.hit_id].append(assignment)
    votes = [(hit_id, a.worker_id, a.answer) for hit_id, items in by_hit.items() for a in items if a.answer]
    majority = majority_vote(answers_frame(votes), labels=["yes", "no"]) if votes else None
    rows = []
    for hit in (
        Hit.objects.filter(study=study, role=HitRole.TASK)
        .select_related("unit__layer__network")
        .order_by("position", "id")
    ):
        items = by_hit.get(hit.pk, [])
        row = {
            "hit": hit.pk,
            "hit_kind": hit.kind,
            "network": hit.unit.layer.network.name if hit.unit else None,
            "layer": hit.unit.layer.name if hit.unit else None,
            "unit": hit.unit.index if hit.unit else None,
            "label": hit.label,
            "label_origin": hit.label_origin,
            "validation_round": hit.validation_round,
            "label_category": hit.label_category,
            "answers": len(items),
            "n_yes": None,
            "n_no": None,
            "majority": None,
            "majority_share": None,
            "tied": None,
            "canonical_description": None,
            "canonical_agreed": None,
            "mean_count": None,
            **pattern_of(hit),
        }
        if hit.kind == CrowdTaskKind.VALIDATION:
            row["n_yes"] = sum(a.answer == "yes" for a in items)
            row["n_no"] = sum(a.answer == "no" for a in items)
            if majority is not None and hit.pk in majority.index:
                top = majority.loc[hit.pk]
                row.update(majority=str(top["label"]), majority_share=float(top["share"]), tied=bool(top["tied"]))
        elif hit.kind == CrowdTaskKind.DESCRIPTION:
            canonical = canonical_description([(a.description, a.confidence or 1) for a in items])
            if canonical is not None:
                row.update(canonical_description=canonical.text, canonical_agreed=canonical.agreed)
        else:
            counts = [a.count for a in items if a.count is not None]
            row["mean_count"] = sum(counts) / len(counts) if counts else None
        rows.append(row)
    return rows


CROWD_EXPORT_FILES: dict[str, tuple[str, str]] = {
    "answers.csv": ("text/csv; charset=utf-8", "Every assignment with full provenance (CSV)"),
    "answers.json": ("application/json", "Every assignment with full provenance (JSON)"),
    "results.csv": ("text/csv; charset=utf-8", "Aggregated results per HIT (CSV)"),
    "results.json": ("application/json", "Aggregated results per HIT (JSON)"),
}


def crowd_export_file(study, name: str, *, simulated: str = "exclude") -> tuple[str, str, str]:
    """The export ``name`` of crowd ``study`` as ``(text, content type, download file name)`` (KeyError if
    unknown). Raw answers carry every worker (simulated ones flagged); results follow ``simulated``."""
    content_type, _ = CROWD_EXPORT_FILES[name]
    stem, suffix = name.rsplit(".", 1)
    if stem == "answers":
        rows, fields, key = crowd_answer_rows(study), CROWD_ANSWER_FIELDS, "answers"
    else:
        rows, fields, key = crowd_results(study, simulated=simulated), CROWD_RESULT_FIELDS, "results"
    text = (
        rows_csv(rows, fields)
        if suffix == "csv"
        else json.dumps(
            {
                "crowd_study": study.name,
                "crowd_study_id": study.pk,
                "kind": study.kind,
                "fields": list(fields),
                **({"simulated": simulated} if stem == "results" else {}),
                key: rows,
            },
            ensure_ascii=False,
            indent=1,
        )
    )
    qualifier = "" if stem == "answers" or simulated == "exclude" else f"-simulated-{simulated}"
    return text, content_type, f"crowd-study-{study.pk}-{stem}{qualifier}.{suffix}"
