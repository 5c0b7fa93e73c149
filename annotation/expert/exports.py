"""Researchers' exports of an expert study: raw judgments with full provenance, aggregated results, the agreement
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

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import Model
from django.template.loader import render_to_string
from django.utils import timezone

from analysis.plots import interval_chart, stacked_bar_chart

from ..common import iso, rows_csv, simulated_check
from ..models import ANSWER_ORDER, YES_ANSWERS, Answer, Study
from . import selectors

JUDGMENT_FIELDS = (
    "judgment",
    "study",
    "task",
    "item",
    "unit",
    "object_class",
    "exemplar_set",
    "grid_sha256",
    "grid_style",
    "rater",
    "rater_id",
    "rater_kind",
    "user",
    "adapter",
    "answer",
    "concept",
    "started_at",
    "submitted_at",
    "seconds",
    "simulated",
    "source_line",
    "revision_of",
    "revised_by",
    "version",
    "chain_first",
    "current",
)
"""Columns of the raw judgments export (CSV header, JSON keys), in order."""

RESULT_FIELDS = (
    "task",
    "item",
    "unit",
    "object_class",
    "raters",
    *[f"n_{answer}" for answer in ANSWER_ORDER],
    "majority",
    "majority_share",
    "names",
    "top_name",
)
"""Columns of the aggregated (per task) results export."""

STATISTIC_LABELS = {
    "percent_agreement": "Percent agreement",
    "cohen_kappa": "Cohen's κ",
    "fleiss_kappa": "Fleiss' κ",
    "krippendorff_alpha": "Krippendorff's α (nominal)",
}
TYPE_COLOURS = {Answer.PART: "#2450a6", Answer.BACKGROUND: "#1f7a4d", Answer.OTHER: "#c2410c", Answer.NO: "#c9d0db"}


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
        rows.append(
            {
                "judgment": judgment.pk,
                "study": study.pk,
                "task": task.pk,
                "item": task.item,
                "unit": task.unit.index if task.unit_id else None,
                "object_class": task.object_class.name if task.object_class_id else None,
                "exemplar_set": task.exemplar_set_id,
                "grid_sha256": judgment.grid.sha256 if judgment.grid_id else None,
                "grid_style": judgment.grid.style if judgment.grid_id else None,
                "rater": rater.name,
                "rater_id": rater.pk,
                "rater_kind": rater.kind,
                "user": rater.user_id,
                "adapter": judgment.origin,
                "answer": judgment.answer,
                "concept": judgment.concept,
                "started_at": iso(judgment.started_at),
                "submitted_at": iso(judgment.submitted_at),
                "seconds": judgment.seconds,
                "simulated": judgment.simulated,
                "source_line": judgment.source_line,
                "revision_of": judgment.revision_of_id,
                "revised_by": revised_by.get(judgment.pk),
                "version": version,
                "chain_first": first.pk,
                "current": judgment.pk not in revised_by,
            }
        )
    return rows


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
        names = Counter(
            key(judgment.concept) for judgment in judgments if judgment.answer in YES_ANSWERS and key(judgment.concept)
        )
        ranked_names = sorted(names.items(), key=lambda item: (-item[1], item[0]))
        rows.append(
            {
                "task": task.pk,
                "item": task.item,
                "unit": task.unit.index if task.unit_id else None,
                "object_class": task.object_class.name if task.object_class_id else None,
                "raters": len(judgments),
                **{f"n_{answer}": counts[answer] for answer in ANSWER_ORDER},
                "majority": majority,
                "majority_share": share,
                "names": [{"name": name, "count": count} for name, count in ranked_names],
                "top_name": ranked_names[0][0] if ranked_names else None,
            }
        )
    return rows


def _jsonable(value: Any) -> Any:
    """Drop model instances from selector output (keep their ids/names), recursively."""
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
    """The study's agreement statistics (GG'18: all five answers; and the variant with "not sure" rejected) with
    bootstrap
    intervals, the filter-type distribution per class (GG'18 Fig. 9), answers per rater, and the comparisons
    of human names with the dataset's vocabulary and with dissection labels — JSON-ready."""
    dissection = selectors.study_dissection_agreement(study, simulated=simulated)
    return {
        "study": study.name,
        "study_id": study.pk,
        "simulated": simulated,
        "generated_at": timezone.now().isoformat(),
        "agreement": selectors.study_agreement(study, simulated=simulated),
        "type_distribution": _jsonable(selectors.study_type_distribution(study, simulated=simulated)),
        "answers_per_rater": [
            {
                "rater": row["rater"].name,
                "kind": row["rater"].kind,
                "counts": dict(zip(ANSWER_ORDER, row["counts"])),
                "total": row["total"],
            }
            for row in selectors.study_rater_answer_counts(study, simulated=simulated)
        ],
        "names_vs_vocabulary": _jsonable(selectors.study_names_vs_vocabulary(study, simulated=simulated)),
        "dissection_agreement": (
            {"summary": dissection["summary"], "rows": _jsonable(dissection["rows"])} if dissection else None
        ),
    }


def study_report_context(study: Study, *, simulated: str = "exclude") -> dict[str, Any]:
    """What the study report shows (the page and the downloadable file): agreement rows and chart, the
    filter-type distribution and chart, answers per rater, items with several raters."""
    agreement = selectors.study_agreement(study, simulated=simulated)
    rows = [
        {
            "label": label,
            "paper": agreement[name],
            "alternative": agreement["alternative"][name],
            "is_cohen": name == "cohen_kappa",
        }
        for name, label in STATISTIC_LABELS.items()
    ]
    distribution = selectors.study_type_distribution(study, simulated=simulated)
    context = {
        "study": study,
        "simulated": simulated,
        "agreement": agreement,
        "statistic_rows": rows,
        "distribution": distribution,
        "answer_labels": [Answer(value).label for value in ANSWER_ORDER],
        "rater_counts": selectors.study_rater_answer_counts(study, simulated=simulated),
        "overlap_items": selectors.study_overlap_items(study, simulated=simulated),
        "has_simulated": study.raters.filter(kind="simulated").exists(),
    }
    shown = [row for row in rows if row["paper"] and row["paper"]["value"] is not None]
    if shown:
        context["agreement_chart"] = interval_chart(
            [row["label"] for row in shown],
            [row["paper"]["value"] for row in shown],
            [row["paper"]["ci"][0] if row["paper"]["ci"] else None for row in shown],
            [row["paper"]["ci"][1] if row["paper"]["ci"] else None for row in shown],
            xlabel=f"agreement, {int(agreement['confidence'] * 100)}% bootstrap interval",
            xlim=(-0.2, 1.0),
        )
    kept = [row for row in distribution["classes"] if row["kept"]]
    if kept:
        labels = [row["class"] for row in kept] + ["average"]
        segments = {
            distribution["labels"][answer]: [row["shares"][answer] for row in kept] + [distribution["average"][answer]]
            for answer in distribution["average"]
        }
        context["distribution_chart"] = stacked_bar_chart(
            labels,
            segments,
            colours=[TYPE_COLOURS[answer] for answer in distribution["average"]],
            xlabel="share of the class's units (not sure rejected)",
        )
    return context


def study_report_html(study: Study, *, simulated: str = "exclude") -> str:
    """The study report as one self-contained HTML file: styles inline, plots inline SVG, no links to fetch."""
    context = study_report_context(study, simulated=simulated)
    context.update(
        names_vs_vocabulary=selectors.study_names_vs_vocabulary(study, simulated=simulated),
        dissection_agreement=selectors.study_dissection_agreement(study, simulated=simulated),
        synonyms=list(study.synonyms.all()),
        classes=list(study.object_classes.values_list("name", flat=True)),
        task_progress=selectors.study_task_progress(study),
        generated_at=timezone.now(),
        stylesheet=(Path(settings.BASE_DIR) / "static" / "css" / "unitscope.css").read_text(),
    )
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
    simulated_check(simulated)
    stem, suffix = name.rsplit(".", 1)
    if stem == "judgments":
        rows = study_judgment_rows(study)
        text = (
            rows_csv(rows, JUDGMENT_FIELDS)
            if suffix == "csv"
            else json.dumps(
                {"study": study.name, "study_id": study.pk, "fields": list(JUDGMENT_FIELDS), "judgments": rows},
                ensure_ascii=False,
                indent=1,
            )
        )
    elif stem == "results":
        rows = study_results(study, simulated=simulated)
        text = (
            rows_csv(rows, RESULT_FIELDS)
            if suffix == "csv"
            else json.dumps(
                {"study": study.name, "study_id": study.pk, "simulated": simulated, "results": rows},
                ensure_ascii=False,
                indent=1,
            )
        )
    elif stem == "agreement":
        text = json.dumps(study_agreement_report(study, simulated=simulated), ensure_ascii=False, indent=1, default=str)
    else:
        text = study_report_html(study, simulated=simulated)
    qualifier = "" if stem == "judgments" or simulated == "exclude" else f"-simulated-{simulated}"
    return text, content_type, f"study-{study.pk}-{stem}{qualifier}.{suffix}"
