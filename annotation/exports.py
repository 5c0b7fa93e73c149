"""Researchers' exports of a study: raw judgments with full provenance, aggregated results, the agreement
report, and a one-page self-contained HTML report. Reads only; the site's download views and the API both
use these functions, so a file downloaded from either is the same.

Provenance of a judgment (DESIGN.md §5: judgments are never overwritten, exports carry who, when, which task
version, how long): the rater (id, name, kind = role, user account), the adapter it came through (the web
page, a simulation, an imported file), the task (id, item, unit, class, exemplar set) and the grid shown (its
content hash = the task's version), the answer and concept name, when it was shown and submitted, the
seconds on task, the simulated flag, and its place in the revision chain (the judgment it revises, the one
that revised it, its version number, the chain's first judgment, whether it is current).
"""
from __future__ import annotations

import io
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from django.conf import settings
from django.http import HttpResponse
from django.template.loader import render_to_string
from django.utils import timezone

from analysis.plots import interval_chart, stacked_bar_chart
from unitscope.spreadsheets import csv_writer

from . import selectors
from .models import ANSWER_ORDER, YES_ANSWERS, Answer, Study

JUDGMENT_FIELDS = (
    "judgment", "study", "task", "item", "unit", "object_class", "exemplar_set", "grid_sha256", "grid_style",
    "rater", "rater_id", "rater_kind", "user", "adapter", "answer", "concept", "started_at", "submitted_at",
    "seconds", "simulated", "source_line", "revision_of", "revised_by", "version", "chain_first", "current",
)
"""Columns of the raw judgments export (CSV header, JSON keys), in order."""

RESULT_FIELDS = ("task", "item", "unit", "object_class", "raters", *[f"n_{answer}" for answer in ANSWER_ORDER],
                 "majority", "majority_share", "names", "top_name")
"""Columns of the aggregated (per task) results export."""

STATISTIC_LABELS = {"percent_agreement": "Percent agreement", "cohen_kappa": "Cohen's κ",
                    "fleiss_kappa": "Fleiss' κ", "krippendorff_alpha": "Krippendorff's α (nominal)"}
TYPE_COLOURS = {Answer.PART: "#2450a6", Answer.BACKGROUND: "#1f7a4d", Answer.OTHER: "#c2410c", Answer.NO: "#c9d0db"}


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def study_judgment_rows(study: Study) -> list[dict[str, Any]]:
    """Every judgment of ``study`` (revisions and simulated raters included) as a dict of
    :data:`JUDGMENT_FIELDS`, ordered by task position, rater name and submission time."""
    judgments = list(selectors.study_judgments_for_export(study).select_related("task__exemplar_set", "grid"))
    by_id = {judgment.pk: judgment for judgment in judgments}
    revised_by = {judgment.revision_of_id: judgment.pk for judgment in judgments if judgment.revision_of_id}
    rows = []
    for judgment in judgments:
        version, first = 1, judgment
        while first.revision_of_id is not None and first.revision_of_id in by_id:
            version += 1
            first = by_id[first.revision_of_id]
        task, rater = judgment.task, judgment.rater
        rows.append({
            "judgment": judgment.pk, "study": study.pk, "task": task.pk, "item": task.item,
            "unit": task.unit.index if task.unit_id else None,
            "object_class": task.object_class.name if task.object_class_id else None,
            "exemplar_set": task.exemplar_set_id, "grid_sha256": judgment.grid.sha256 if judgment.grid_id else None,
            "grid_style": judgment.grid.style if judgment.grid_id else None,
            "rater": rater.name, "rater_id": rater.pk, "rater_kind": rater.kind, "user": rater.user_id,
            "adapter": judgment.origin, "answer": judgment.answer, "concept": judgment.concept,
            "started_at": _iso(judgment.started_at), "submitted_at": _iso(judgment.submitted_at),
            "seconds": judgment.seconds, "simulated": judgment.simulated, "source_line": judgment.source_line,
            "revision_of": judgment.revision_of_id, "revised_by": revised_by.get(judgment.pk), "version": version,
            "chain_first": first.pk, "current": judgment.pk not in revised_by,
        })
    return rows


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return value


def rows_csv(rows: list[dict[str, Any]], fields: tuple[str, ...]) -> str:
    """``rows`` as CSV text with header ``fields`` (None → empty, booleans → 0/1, lists → JSON)."""
    buffer = io.StringIO()
    writer = csv_writer(buffer)
    writer.writerow(fields)
    for row in rows:
        writer.writerow([_csv_cell(row.get(field)) for field in fields])
    return buffer.getvalue()


def study_results(study: Study, *, simulated: str = "exclude") -> list[dict[str, Any]]:
    """Per task, the current judgments aggregated: raters, count of each answer, the majority answer
    (plurality over the answers other than "not sure", as GG'18 rejects those; ``None`` on a tie or when
    no answer is left) with its share, and the concept names given (normalised with the study's synonyms,
    most given first)."""
    key = selectors.study_name_key(study)
    by_task: dict[int, list] = defaultdict(list)
    for judgment in selectors._included(study, simulated).only("task_id", "answer", "concept"):
        by_task[judgment.task_id].append(judgment)
    rows = []
    for task in study.tasks.select_related("unit", "object_class").order_by("position", "id"):
        judgments = by_task.get(task.pk, [])
        counts = Counter(judgment.answer for judgment in judgments)
        kept = Counter({answer: n for answer, n in counts.items() if answer != Answer.NOT_SURE})
        majority, share = None, None
        if kept:
            ranked = kept.most_common()
            if len(ranked) == 1 or ranked[0][1] > ranked[1][1]:
                majority, share = ranked[0][0], ranked[0][1] / sum(kept.values())
        names = Counter(key(judgment.concept) for judgment in judgments
                        if judgment.answer in YES_ANSWERS and key(judgment.concept))
        ranked_names = sorted(names.items(), key=lambda item: (-item[1], item[0]))
        rows.append({"task": task.pk, "item": task.item, "unit": task.unit.index if task.unit_id else None,
                     "object_class": task.object_class.name if task.object_class_id else None,
                     "raters": len(judgments), **{f"n_{answer}": counts[answer] for answer in ANSWER_ORDER},
                     "majority": majority, "majority_share": share,
                     "names": [{"name": name, "count": count} for name, count in ranked_names],
                     "top_name": ranked_names[0][0] if ranked_names else None})
    return rows


def _jsonable(value: Any) -> Any:
    """Drop model instances from selector output (keep their ids/names), recursively."""
    from django.db.models import Model

    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items() if not isinstance(item, Model)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, set):
        return sorted(_jsonable(item) for item in value)
    if isinstance(value, Model):
        return str(value)
    return value


def study_agreement_report(study: Study, *, simulated: str = "exclude") -> dict[str, Any]:
    """The study's agreement statistics (GG'18: "not sure" rejected; and kept as a category) with bootstrap
    intervals, the filter-type distribution per class (GG'18 Fig. 9), answers per rater, and the comparisons
    of human names with the dataset's vocabulary and with dissection labels — JSON-ready."""
    dissection = selectors.study_dissection_agreement(study, simulated=simulated)
    return {
        "study": study.name, "study_id": study.pk, "simulated": simulated,
        "generated_at": timezone.now().isoformat(),
        "agreement": selectors.study_agreement(study, simulated=simulated),
        "type_distribution": _jsonable(selectors.study_type_distribution(study, simulated=simulated)),
        "answers_per_rater": [{"rater": row["rater"].name, "kind": row["rater"].kind,
                               "counts": dict(zip(ANSWER_ORDER, row["counts"])), "total": row["total"]}
                              for row in selectors.study_rater_answer_counts(study, simulated=simulated)],
        "names_vs_vocabulary": _jsonable(selectors.study_names_vs_vocabulary(study, simulated=simulated)),
        "dissection_agreement": ({"summary": dissection["summary"], "rows": _jsonable(dissection["rows"])}
                                 if dissection else None),
    }


def study_report_context(study: Study, *, simulated: str = "exclude") -> dict[str, Any]:
    """What the study report shows (the page and the downloadable file): agreement rows and chart, the
    filter-type distribution and chart, answers per rater, items with several raters."""
    agreement = selectors.study_agreement(study, simulated=simulated)
    rows = [{"label": label, "paper": agreement[name], "alternative": agreement["alternative"][name],
             "is_cohen": name == "cohen_kappa"} for name, label in STATISTIC_LABELS.items()]
    distribution = selectors.study_type_distribution(study, simulated=simulated)
    context = {"study": study, "simulated": simulated, "agreement": agreement, "statistic_rows": rows,
               "distribution": distribution, "answer_labels": [Answer(value).label for value in ANSWER_ORDER],
               "rater_counts": selectors.study_rater_answer_counts(study, simulated=simulated),
               "overlap_items": selectors.study_overlap_items(study, simulated=simulated),
               "has_simulated": study.raters.filter(kind="simulated").exists()}
    shown = [row for row in rows if row["paper"] and row["paper"]["value"] is not None]
    if shown:
        context["agreement_chart"] = interval_chart(
            [row["label"] for row in shown], [row["paper"]["value"] for row in shown],
            [row["paper"]["ci"][0] if row["paper"]["ci"] else None for row in shown],
            [row["paper"]["ci"][1] if row["paper"]["ci"] else None for row in shown],
            xlabel=f"agreement, {int(agreement['confidence'] * 100)}% bootstrap interval", xlim=(-0.2, 1.0))
    kept = [row for row in distribution["classes"] if row["kept"]]
    if kept:
        labels = [row["class"] for row in kept] + ["average"]
        segments = {distribution["labels"][answer]: [row["shares"][answer] for row in kept]
                    + [distribution["average"][answer]] for answer in distribution["average"]}
        context["distribution_chart"] = stacked_bar_chart(
            labels, segments, colours=[TYPE_COLOURS[answer] for answer in distribution["average"]],
            xlabel="share of the class's units (not sure rejected)")
    return context


def study_report_html(study: Study, *, simulated: str = "exclude") -> str:
    """The study report as one self-contained HTML file: styles inline, plots inline SVG, no links to fetch."""
    context = study_report_context(study, simulated=simulated)
    context.update(names_vs_vocabulary=selectors.study_names_vs_vocabulary(study, simulated=simulated),
                   dissection_agreement=selectors.study_dissection_agreement(study, simulated=simulated),
                   synonyms=list(study.synonyms.all()), classes=list(study.object_classes.values_list("name", flat=True)),
                   task_progress=selectors.study_task_progress(study), generated_at=timezone.now(),
                   stylesheet=(Path(settings.BASE_DIR) / "static" / "css" / "unitscope.css").read_text())
    return render_to_string("annotation/study_report_file.html", context)


STUDY_EXPORT_FILES: dict[str, tuple[str, str]] = {
    "judgments.csv": ("text/csv; charset=utf-8", "Every judgment with full provenance (CSV)"),
    "judgments.json": ("application/json", "Every judgment with full provenance (JSON)"),
    "results.csv": ("text/csv; charset=utf-8", "Aggregated results per task (CSV)"),
    "results.json": ("application/json", "Aggregated results per task (JSON)"),
    "agreement.json": ("application/json", "Agreement report (JSON)"),
    "report.html": ("text/html; charset=utf-8", "One-page study report (self-contained HTML)"),
}
"""The files a study can be exported as: name → (content type, description). Raw judgments always carry
every rater (simulated ones flagged); results, agreement and the report follow ``simulated``."""


def study_export_file(study: Study, name: str, *, simulated: str = "exclude") -> tuple[str, str, str]:
    """The export ``name`` of ``study`` as ``(text, content type, download file name)``.

    Raises KeyError for an unknown name, ValueError for a bad ``simulated``."""
    content_type, _ = STUDY_EXPORT_FILES[name]
    if simulated not in selectors.SIMULATED_CHOICES:
        raise ValueError(f"simulated must be one of {', '.join(selectors.SIMULATED_CHOICES)}")
    stem, suffix = name.rsplit(".", 1)
    if stem == "judgments":
        rows = study_judgment_rows(study)
        text = rows_csv(rows, JUDGMENT_FIELDS) if suffix == "csv" else json.dumps(
            {"study": study.name, "study_id": study.pk, "fields": list(JUDGMENT_FIELDS), "judgments": rows},
            ensure_ascii=False, indent=1)
    elif stem == "results":
        rows = study_results(study, simulated=simulated)
        text = rows_csv(rows, RESULT_FIELDS) if suffix == "csv" else json.dumps(
            {"study": study.name, "study_id": study.pk, "simulated": simulated, "results": rows},
            ensure_ascii=False, indent=1)
    elif stem == "agreement":
        text = json.dumps(study_agreement_report(study, simulated=simulated), ensure_ascii=False, indent=1,
                          default=str)
    else:
        text = study_report_html(study, simulated=simulated)
    qualifier = "" if stem == "judgments" or simulated == "exclude" else f"-simulated-{simulated}"
    return text, content_type, f"study-{study.pk}-{stem}{qualifier}.{suffix}"


# -- crowd studies (votes, descriptions, purity counts) ----------------------------------------------------------

CROWD_ANSWER_FIELDS = (
    "assignment", "study", "hit", "hit_token", "hit_kind", "hit_role", "network", "layer", "unit", "label",
    "label_origin", "label_category", "grid_sha256", "worker", "worker_adapter", "worker_external_id",
    "worker_simulated", "user", "state", "answer", "description", "confidence", "count", "pasted", "gold_correct",
    "leased_at", "shown_at", "submitted_at", "seconds", "returned_at", "reason", "reviewed_by", "reviewed_at",
    "external_assignment_id", "external_hit_id", "external_session",
)
"""Columns of a crowd study's raw answers export: every assignment (leased, returned, submitted, approved,
rejected; task, gold and qualification HITs), with the HIT it answered (kind, role, unit, label and — for
researchers only — the label's origin), the worker (adapter, external id, simulated), the answer by kind, times,
seconds on task, review, and the platform's hand-off ids."""

CROWD_RESULT_FIELDS = ("hit", "hit_kind", "network", "layer", "unit", "label", "label_origin", "label_category",
                       "answers", "n_yes", "n_no", "majority", "majority_share", "tied", "canonical_description",
                       "canonical_agreed", "mean_count", "purity_shown")
"""Columns of a crowd study's aggregated results: per task HIT, the answers that count (submitted or approved)."""


def crowd_answer_rows(study) -> list[dict[str, Any]]:
    """Every assignment of crowd ``study`` as a dict of :data:`CROWD_ANSWER_FIELDS`, in lease order."""
    from .models import CrowdAssignment

    assignments = (CrowdAssignment.objects.filter(hit__study=study)
                   .select_related("hit__unit__layer__network", "hit__grid", "worker", "reviewed_by")
                   .order_by("leased_at", "id"))
    rows = []
    for assignment in assignments:
        hit, worker = assignment.hit, assignment.worker
        unit = hit.unit
        rows.append({
            "assignment": assignment.pk, "study": study.pk, "hit": hit.pk, "hit_token": hit.token, "hit_kind": hit.kind,
            "hit_role": hit.role, "network": unit.layer.network.name if unit else None,
            "layer": unit.layer.name if unit else None, "unit": unit.index if unit else None, "label": hit.label,
            "label_origin": hit.label_origin, "label_category": hit.label_category,
            "grid_sha256": hit.grid.sha256 if hit.grid_id else None, "worker": worker.pk,
            "worker_adapter": worker.adapter, "worker_external_id": worker.external_id,
            "worker_simulated": worker.simulated, "user": worker.user_id, "state": assignment.state,
            "answer": assignment.answer, "description": assignment.description, "confidence": assignment.confidence,
            "count": assignment.count, "pasted": assignment.pasted, "gold_correct": assignment.gold_correct,
            "leased_at": _iso(assignment.leased_at), "shown_at": _iso(assignment.shown_at),
            "submitted_at": _iso(assignment.submitted_at), "seconds": assignment.seconds,
            "returned_at": _iso(assignment.returned_at), "reason": assignment.reason,
            "reviewed_by": assignment.reviewed_by.get_username() if assignment.reviewed_by_id else None,
            "reviewed_at": _iso(assignment.reviewed_at), "external_assignment_id": assignment.external_assignment_id,
            "external_hit_id": assignment.external_hit_id, "external_session": assignment.external_session,
        })
    return rows


def crowd_results(study, *, simulated: str = "exclude") -> list[dict[str, Any]]:
    """Per task HIT of crowd ``study``, its counted answers (submitted or approved; ``simulated`` as for expert
    studies): validation yes/no counts and the majority (:func:`annotation.aggregation.majority_vote`, ties
    flagged), a description HIT's canonical description (:func:`annotation.crowd_selectors.canonical_description`),
    a purity HIT's mean count over the images shown."""
    from .aggregation import answers_frame, majority_vote
    from .crowd_selectors import canonical_description
    from .models import CrowdAssignment, CrowdTaskKind, Hit, HitRole

    if simulated not in selectors.SIMULATED_CHOICES:
        raise ValueError(f"simulated must be one of {', '.join(selectors.SIMULATED_CHOICES)}")
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
    for hit in (Hit.objects.filter(study=study, role=HitRole.TASK).select_related("unit__layer__network")
                .order_by("position", "id")):
        items = by_hit.get(hit.pk, [])
        row = {"hit": hit.pk, "hit_kind": hit.kind, "network": hit.unit.layer.network.name if hit.unit else None,
               "layer": hit.unit.layer.name if hit.unit else None, "unit": hit.unit.index if hit.unit else None,
               "label": hit.label, "label_origin": hit.label_origin, "label_category": hit.label_category,
               "answers": len(items), "n_yes": None, "n_no": None, "majority": None, "majority_share": None,
               "tied": None, "canonical_description": None, "canonical_agreed": None, "mean_count": None,
               "purity_shown": hit.purity_shown}
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
    text = rows_csv(rows, fields) if suffix == "csv" else json.dumps(
        {"crowd_study": study.name, "crowd_study_id": study.pk, "kind": study.kind, "fields": list(fields),
         **({"simulated": simulated} if stem == "results" else {}), key: rows}, ensure_ascii=False, indent=1)
    qualifier = "" if stem == "answers" or simulated == "exclude" else f"-simulated-{simulated}"
    return text, content_type, f"crowd-study-{study.pk}-{stem}{qualifier}.{suffix}"


def attachment_response(text: str | bytes, content_type: str, filename: str) -> HttpResponse:
    """An export file as a download (the site's and the API's export endpoints)."""
    response = HttpResponse(text, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
