"""Reads of expert studies: progress, an expert's answers, suggestions, agreement and type distributions, and the
comparisons of human names with the dataset's vocabulary and with dissection labels."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.db.models import Count, F, Max, Q

from analysis.engine import agreement as engine
from analysis.models import Concept, ExemplarKind, ExemplarSet, LayerExtraction
from analysis.selectors import dissection_results_by_unit, latest_dissection

from ..common import simulated_check
from ..models import ANSWER_ORDER, YES_ANSWERS, Answer, Judgment, RaterKind, Study, StudyRater, StudyTask
from ..naming import normalise_concept_name, strip_broden_suffix

NOT_SURE_CODE = ANSWER_ORDER.index(Answer.NOT_SURE)
TYPE_ANSWERS = (Answer.PART, Answer.BACKGROUND, Answer.OTHER, Answer.NO)
TYPE_LABELS = {
    Answer.PART: "semantic part",
    Answer.BACKGROUND: "background",
    Answer.OTHER: "other",
    Answer.NO: "not systematic",
}


@dataclass(frozen=True)
class Progress:
    done: int
    total: int

    @property
    def percent(self) -> int:
        return int(100 * self.done / self.total) if self.total else 0

    @property
    def remaining(self) -> int:
        return max(self.total - self.done, 0)


def _eligible_tasks(rater: StudyRater):
    """Tasks ``rater`` has or may still claim (owned by them or open to all, not full, or theirs)."""
    return (
        StudyTask.objects.filter(study_id=rater.study_id)
        .filter(Q(owner__isnull=True) | Q(owner=rater))
        .filter(Q(assignments__rater=rater) | Q(assigned_count__lt=F("capacity")))
        .distinct()
    )


def rater_progress(rater: StudyRater) -> Progress:
    """Tasks answered by ``rater`` out of the tasks they have or may still take."""
    done = Judgment.objects.filter(rater=rater, revision_of__isnull=True).count()
    if rater.kind != RaterKind.EXPERT:
        return Progress(done, rater.study.tasks.count())
    return Progress(done, max(_eligible_tasks(rater).count(), done))


def expert_study_rows(user) -> list[dict[str, Any]]:
    """The expert's studies, newest first, each with their progress."""
    raters = (
        StudyRater.objects.filter(user=user, kind=RaterKind.EXPERT)
        .select_related("study__layer__network", "study__extraction__dataset")
        .order_by("-study__created_at")
    )
    return [{"rater": rater, "study": rater.study, "progress": rater_progress(rater)} for rater in raters]


def expert_rater(user, study_id: int) -> StudyRater | None:
    """The user's expert rater in the study (at most one: ``(study, user)`` is unique), or None. Its study is
    loaded when first used: the next-task claim, the hottest request, needs only its id."""
    try:
        return StudyRater.objects.get(user_id=user.pk, kind=RaterKind.EXPERT, study_id=study_id)
    except StudyRater.DoesNotExist:
        return None


def study_rows() -> list[dict[str, Any]]:
    """Every study with its numbers of tasks, raters and human judgments."""
    studies = Study.objects.select_related("layer__network", "extraction__dataset", "created_by").annotate(
        task_count=Count("tasks", distinct=True), rater_count=Count("raters", distinct=True)
    )
    judged = dict(
        Judgment.objects.current().human().values("task__study").annotate(n=Count("id")).values_list("task__study", "n")
    )
    return [{"study": study, "judgments": judged.get(study.pk, 0)} for study in studies]


def study_rater_rows(study: Study) -> list[dict[str, Any]]:
    """Per rater: kind, progress, revisions, median seconds per judgment, last activity."""
    rows = []
    for rater in study.raters.select_related("user").order_by("kind", "name"):
        judgments = Judgment.objects.filter(rater=rater)
        seconds = [value for value in judgments.filter(seconds__isnull=False).values_list("seconds", flat=True)]
        rows.append(
            {
                "rater": rater,
                "progress": rater_progress(rater),
                "revisions": judgments.filter(revision_of__isnull=False).count(),
                "median_seconds": statistics.median(seconds) if seconds else None,
                "last": judgments.aggregate(last=Max("submitted_at"))["last"],
            }
        )
    return rows


def study_task_progress(study: Study) -> dict[str, int]:
    """Tasks, tasks with a human judgment, and human judgments given vs. planned."""
    tasks = study.tasks.all()
    answered = tasks.filter(judgments__simulated=False).distinct().count()
    planned = sum(tasks.values_list("capacity", flat=True))
    given = Judgment.objects.filter(task__study=study, simulated=False, revision_of__isnull=True).count()
    return {"tasks": tasks.count(), "answered": answered, "planned": planned, "given": given}


def rater_answers(rater: StudyRater) -> list[Judgment]:
    """The rater's current judgments (latest first), each with ``version`` (1 = never revised)."""
    rows = list(
        Judgment.objects.filter(rater=rater)
        .select_related("task__object_class", "task__exemplar_set__grid")
        .order_by("-submitted_at", "-id")
    )
    by_id = {judgment.pk: judgment for judgment in rows}
    revised = {judgment.revision_of_id for judgment in rows if judgment.revision_of_id}
    current = [judgment for judgment in rows if judgment.pk not in revised]
    for judgment in current:
        version, previous = 1, judgment.revision_of_id
        while previous is not None:
            version += 1
            previous = by_id[previous].revision_of_id
        judgment.version = version
    return current


def current_judgment(rater: StudyRater, task: StudyTask) -> Judgment | None:
    return Judgment.objects.current().filter(rater=rater, task=task).first()


def task_number(task: StudyTask, rater: StudyRater) -> int:
    """1-based position of ``task`` among the tasks the rater has taken."""
    return rater.assignments.filter(task__position__lte=task.position).count()


def concept_suggestions(study: Study, *, rater: StudyRater | None = None, limit: int = 400) -> list[str]:
    """Names already given in the study by people (most used first; only ``rater``'s own where the study does
    not suggest other experts' names), then the dataset's concept names."""
    given = Judgment.objects.current().human().filter(task__study=study)
    if not study.suggest_given_names:
        given = given.filter(rater=rater) if rater is not None else given.none()
    given = (
        given.exclude(concept="")
        .values("concept")
        .annotate(uses=Count("id"))
        .order_by("-uses", "concept")
        .values_list("concept", flat=True)
    )
    names = list(given)
    if study.extraction_id:
        dataset = LayerExtraction.objects.filter(pk=study.extraction_id).values("dataset_id")[:1]
        dataset_names = (
            Concept.objects.filter(dataset_id=dataset, category__in=["part", "material", "color", "object"])
            .order_by("-image_count", "name")
            .values_list("name", flat=True)
        )
        names += [strip_broden_suffix(name) for name in dataset_names]
    return list(dict.fromkeys(names))[:limit]


# -- reports -------------------------------------------------------------------------------------------


def _included(study: Study, simulated: str):
    judgments = Judgment.objects.current().filter(task__study=study)
    if simulated == "exclude":
        return judgments.filter(simulated=False)
    if simulated == "only":
        return judgments.filter(simulated=True)
    return judgments


AGREEMENT_METHODS = {
    "category": "GG'18 §4.1: all five answers count, “not sure” as a category (the paper's 79% figure)",
    "rejected": "variant: “not sure” answers rejected before agreement is computed",
}


def _summary_dict(summary: engine.AgreementSummary) -> dict[str, Any]:
    return summary.as_dict()


def study_agreement(
    study: Study,
    *,
    simulated: str = "exclude",
    replicates: int = engine.DEFAULT_REPLICATES,
    seed: int = 0,
    confidence: float = engine.DEFAULT_CONFIDENCE,
) -> dict[str, Any]:
    """Agreement on the five answers over the study's items: the headline counts all five answers, "not
    sure" included as a category, as GG'18 §4.1 does for its 79% ("the two annotators clicked on the same
    answer (out of the 5 possible answers)"); ``alternative`` is the named variant with "not sure" answers
    rejected first (GG'18 rejects them for the filter-type distribution, Fig. 9, not for agreement).
    Each block says which it is under ``not_sure`` ("category" / "rejected") and ``method``.

    ``simulated``: ``exclude`` (default) leaves simulated raters out, ``include`` adds them, ``only``
    reports them alone. Each rater's current (latest) judgment counts.
    """
    simulated_check(simulated)
    rows = list(_included(study, simulated).values_list("task_id", "rater_id", "answer"))
    triples = [(task, rater, ANSWER_ORDER.index(answer)) for task, rater, answer in rows]
    raters = dict(StudyRater.objects.filter(pk__in={rater for _, rater, _ in rows}).values_list("pk", "name"))
    if triples:
        matrix, _, rater_ids = engine.ratings_matrix(triples)
    else:
        matrix, rater_ids = np.zeros((0, 0), dtype=np.int64), []
    common = dict(replicates=replicates, seed=seed, confidence=confidence, n_categories=len(ANSWER_ORDER))
    excluded = engine.agreement_summary(matrix, exclude=[NOT_SURE_CODE], **common) if triples else None
    kept = engine.agreement_summary(matrix, **common) if triples else None
    empty = {name: None for name in engine.AgreementSummary.STATISTICS} | {"n_items": 0, "n_raters": 0, "n_answers": 0}

    def pairing_raters(exclude: list[int]) -> list[str]:
        """Raters with an answer on an item that has two or more (those the statistics count)."""
        if not triples:
            return []
        used = engine.exclude_categories(matrix, exclude)
        active = (used[engine.pairable_items(used)] != engine.MISSING).any(axis=0)
        return [raters[pk] for pk, keep in zip(rater_ids, active) if keep]

    result = {
        "study": study.name,
        "study_id": study.pk,
        "simulated": simulated,
        "not_sure": "category",
        "method": AGREEMENT_METHODS["category"],
        "raters": pairing_raters([]),
        "all_raters": [raters[pk] for pk in rater_ids],
        **(_summary_dict(kept) if kept else empty),
    }
    result["alternative"] = {
        "not_sure": "rejected",
        "method": AGREEMENT_METHODS["rejected"],
        "raters": pairing_raters([NOT_SURE_CODE]),
        **(_summary_dict(excluded) if excluded else empty),
    }
    return result


def study_type_distribution(study: Study, *, simulated: str = "exclude") -> dict[str, Any]:
    """GG'18 Fig. 9: per object class the shares of filter types (part, background, other, none) over the
    class's tasks, "not sure" rejected; a task done by several raters averages their answers; and the
    average over classes. Counts of kept and rejected tasks come with each class."""
    by_task: dict[int, list[int]] = defaultdict(list)
    for task_id, answer in _included(study, simulated).values_list("task_id", "answer"):
        by_task[task_id].append(ANSWER_ORDER.index(answer))
    class_of = dict(study.tasks.filter(pk__in=list(by_task)).values_list("pk", "object_class__name"))
    groups: dict[str, list[list[int]]] = defaultdict(list)
    for task_id, answers in by_task.items():
        groups[class_of.get(task_id) or "all items"].append(answers)
    order = list(study.object_classes.values_list("name", flat=True)) if study.kind == "network" else []
    classes = sorted(groups, key=lambda name: (order.index(name) if name in order else len(order), name))
    rows = []
    for name in classes:
        shares, kept, rejected = engine.type_distribution(groups[name], len(ANSWER_ORDER), rejected=[NOT_SURE_CODE])
        rows.append(
            {
                "class": name,
                "kept": kept,
                "rejected": rejected,
                "shares": {answer: float(shares[ANSWER_ORDER.index(answer)]) for answer in TYPE_ANSWERS},
            }
        )
    kept_rows = [row for row in rows if row["kept"]]
    average = {
        answer: (sum(row["shares"][answer] for row in kept_rows) / len(kept_rows) if kept_rows else 0.0)
        for answer in TYPE_ANSWERS
    }
    return {"classes": rows, "average": average, "labels": {answer: TYPE_LABELS[answer] for answer in TYPE_ANSWERS}}


def study_rater_answer_counts(study: Study, *, simulated: str = "exclude") -> list[dict[str, Any]]:
    """Per rater, how often they gave each answer (current judgments)."""
    counts: dict[int, Counter] = defaultdict(Counter)
    for rater_id, answer in _included(study, simulated).values_list("rater_id", "answer"):
        counts[rater_id][answer] += 1
    raters = StudyRater.objects.filter(pk__in=list(counts)).order_by("kind", "name")
    return [
        {
            "rater": rater,
            "counts": [counts[rater.pk][answer] for answer in ANSWER_ORDER],
            "total": sum(counts[rater.pk].values()),
        }
        for rater in raters
    ]


def study_overlap_items(study: Study, *, simulated: str = "exclude", limit: int = 60) -> list[dict[str, Any]]:
    """Items answered by two or more raters, disagreements first, with every rater's answer and name."""
    per_task: dict[int, list[Judgment]] = defaultdict(list)
    for judgment in _included(study, simulated).select_related("rater"):
        per_task[judgment.task_id].append(judgment)
    shared = {task_id: judgments for task_id, judgments in per_task.items() if len(judgments) >= 2}
    tasks = {task.pk: task for task in StudyTask.objects.filter(pk__in=list(shared)).select_related("object_class")}
    rows = [
        {
            "task": tasks[task_id],
            "judgments": sorted(judgments, key=lambda j: j.rater.name),
            "agree": len({j.answer for j in judgments}) == 1,
        }
        for task_id, judgments in shared.items()
    ]
    rows.sort(key=lambda row: (row["agree"], row["task"].position))
    return rows[:limit]


def study_judgments_for_export(study: Study):
    """Every judgment of the study (revisions and simulated ones included) with its provenance."""
    return (
        Judgment.objects.filter(task__study=study)
        .select_related("task__unit", "task__object_class", "rater__user", "grid")
        .order_by("task__position", "rater__name", "submitted_at", "id")
    )


# -- comparisons (issue 7, item 4): human names vs the dataset's vocabulary and vs dissection labels ---------

PART_CATEGORY = "part"
MATCH_RULE = "a unit matches when one of its normalised human names equals its normalised dissection label"


def study_synonyms(study: Study) -> dict[str, str]:
    """The study's synonym table: normalised name → normalised name it counts as."""
    return dict(study.synonyms.values_list("name", "maps_to"))


def study_name_key(study: Study):
    """``key(name)``: :func:`annotation.naming.normalise_concept_name` with the study's synonyms."""
    synonyms = study_synonyms(study)
    return lambda name: normalise_concept_name(name, synonyms)


def study_dataset(study: Study):
    """The dataset whose grids the study shows (None for imported studies)."""
    return study.extraction.dataset if study.extraction_id else None


def dataset_part_vocabulary(dataset) -> list[str]:
    """Names of the dataset's part concepts (primary category ``part`` or ``part`` among its categories)."""
    if dataset is None:
        return []
    return sorted(
        concept.name
        for concept in dataset.concepts.only("name", "category", "categories")
        if concept.category == PART_CATEGORY or PART_CATEGORY in (concept.categories or {})
    )


def _part_majority_tasks(study: Study, simulated: str) -> dict[int, list[Judgment]]:
    """Tasks a strict majority of their raters (shown, "not sure" rejected) judged "semantic part", with the
    judgments that said so."""
    by_task: dict[int, list[Judgment]] = defaultdict(list)
    for judgment in _included(study, simulated).exclude(answer=Answer.NOT_SURE):
        by_task[judgment.task_id].append(judgment)
    result = {}
    for task_id, judgments in by_task.items():
        parts = [judgment for judgment in judgments if judgment.answer == Answer.PART]
        if 2 * len(parts) > len(judgments):
            result[task_id] = parts
    return result


def study_names_vs_vocabulary(study: Study, *, simulated: str = "exclude") -> dict[str, Any]:
    """GG'18 §4.3 / Table 3: over the tasks judged "semantic part" by the majority of their raters, the part
    names people gave that are in the dataset's part vocabulary and those that are not, matched through
    :func:`study_name_key`. Each row: the name, its tasks, units, object classes and the spellings given."""
    key = study_name_key(study)
    dataset = study_dataset(study)
    vocabulary = dataset_part_vocabulary(dataset)
    vocabulary_keys = {key(name) for name in vocabulary}
    majority = _part_majority_tasks(study, simulated)
    tasks = {task.pk: task for task in StudyTask.objects.filter(pk__in=list(majority)).select_related("object_class")}
    grouped: dict[str, dict[str, Any]] = {}
    unnamed = 0
    for task_id, judgments in majority.items():
        task = tasks[task_id]
        names = {key(judgment.concept): judgment.concept for judgment in judgments if key(judgment.concept)}
        if not names:
            unnamed += 1
        spellings: dict[str, set[str]] = defaultdict(set)
        for judgment in judgments:
            if key(judgment.concept):
                spellings[key(judgment.concept)].add(judgment.concept)
        for name in names:
            row = grouped.setdefault(
                name, {"name": name, "tasks": 0, "units": set(), "classes": Counter(), "given_as": set()}
            )
            row["tasks"] += 1
            row["units"].add(task.unit_id or task.item)
            row["classes"][task.object_class.name if task.object_class_id else "all items"] += 1
            row["given_as"] |= spellings[name]
    rows = []
    for row in grouped.values():
        rows.append(
            {
                "name": row["name"],
                "tasks": row["tasks"],
                "units": len(row["units"]),
                "classes": sorted(row["classes"].items(), key=lambda item: (-item[1], item[0])),
                "given_as": sorted(row["given_as"], key=str.lower),
                "in_vocabulary": row["name"] in vocabulary_keys,
            }
        )
    rows.sort(key=lambda row: (-row["tasks"], row["name"]))
    inside = [row for row in rows if row["in_vocabulary"]]
    outside = [row for row in rows if not row["in_vocabulary"]]
    return {
        "dataset": dataset.name if dataset else None,
        "vocabulary": vocabulary,
        "vocabulary_size": len(vocabulary_keys),
        "part_tasks": len(majority),
        "unnamed_tasks": unnamed,
        "in_vocabulary": inside,
        "not_in_vocabulary": outside,
        "vocabulary_unnamed": sorted(vocabulary_keys - {row["name"] for row in inside}),
    }


def study_dissection(study: Study):
    """The newest complete (non-baseline) dissection of the study's layer on the study's dataset, or None."""
    dataset = study_dataset(study)
    if study.layer_id is None or dataset is None:
        return None
    return latest_dissection(study.layer, dataset=dataset)


def _share(matches: int, total: int) -> float | None:
    return matches / total if total else None


def study_dissection_agreement(study: Study, *, simulated: str = "exclude", dissection=None) -> dict[str, Any] | None:
    """Per unit, the names people gave it (any yes-answer, any class; current judgments of the raters shown)
    against its dissection label and IoU; None when the study's layer has no dissection on its dataset.

    ``summary`` (JSON-ready): units named, units compared (named and with a dissection result), matches and
    their share, the same among detectors. ``rows``: every compared unit, disagreements first.
    """
    dissection = dissection or study_dissection(study)
    if dissection is None:
        return None
    key = study_name_key(study)
    names: dict[int, Counter] = defaultdict(Counter)
    spellings: dict[int, set[str]] = defaultdict(set)
    for unit_index, concept in (
        _included(study, simulated)
        .filter(answer__in=list(YES_ANSWERS), task__unit__isnull=False)
        .values_list("task__unit__index", "concept")
    ):
        if key(concept):
            names[unit_index][key(concept)] += 1
            spellings[unit_index].add(concept)
    results = dissection_results_by_unit(dissection)
    rows = []
    for unit_index in sorted(names):
        result = results.get(unit_index)
        if result is None:
            continue
        label = result.concept.name if result.concept_id else None
        label_key = key(label) if label else ""
        ranks = [
            rank
            for rank, top in enumerate(result.top_concepts or [], start=1)
            if key(top.get("name", "")) in names[unit_index]
        ]
        rows.append(
            {
                "unit": unit_index,
                "names": names[unit_index].most_common(),
                "given_as": sorted(spellings[unit_index], key=str.lower),
                "label": label,
                "label_key": label_key,
                "category": result.concept.category if result.concept_id else None,
                "iou": result.iou,
                "is_detector": result.is_detector,
                "saturated": result.saturated,
                "match": bool(label_key) and label_key in names[unit_index],
                "top_rank": ranks[0] if ranks else None,
            }
        )
    rows.sort(key=lambda row: (row["match"], row["unit"]))
    matches = sum(row["match"] for row in rows)
    detectors = [row for row in rows if row["is_detector"]]
    detector_matches = sum(row["match"] for row in detectors)
    summary = {
        "dissection_run": dissection.run_id,
        "dataset": dissection.dataset.name,
        "layer": dissection.layer.name,
        "iou_threshold": dissection.iou_threshold,
        "rule": MATCH_RULE,
        "units_named": len(names),
        "units_compared": len(rows),
        "matches": matches,
        "share": _share(matches, len(rows)),
        "detectors": {
            "units_compared": len(detectors),
            "matches": detector_matches,
            "share": _share(detector_matches, len(detectors)),
        },
    }
    return {"summary": summary, "rows": rows, "dissection": dissection}


def unit_expert_answers(unit) -> list[dict[str, Any]]:
    """Every expert study's current answers about ``unit``, study by study (newest first): per object class
    the raters' answers (``rater``, ``answer`` label, ``concept``, ``simulated``) and the names given."""
    judgments = (
        Judgment.objects.current()
        .filter(task__unit=unit)
        .select_related("task__study", "task__object_class", "rater")
        .order_by("-task__study__created_at", "task__object_class__name", "rater__name")
    )
    labels = dict(Answer.choices)
    studies: dict[int, dict[str, Any]] = {}
    for judgment in judgments:
        study = judgment.task.study
        entry = studies.setdefault(study.pk, {"study": study, "classes": {}})
        name = judgment.task.object_class.name if judgment.task.object_class_id else judgment.task.item
        entry["classes"].setdefault(name, []).append(
            {
                "rater": judgment.rater.name,
                "answer": judgment.answer,
                "answer_label": labels.get(judgment.answer),
                "yes": judgment.answer in YES_ANSWERS,
                "concept": judgment.concept,
                "simulated": judgment.simulated,
            }
        )
    return [
        {
            "study": entry["study"],
            "classes": [
                {
                    "name": name,
                    "answers": answers,
                    "names": sorted({a["concept"] for a in answers if a["yes"] and a["concept"]}),
                }
                for name, answers in entry["classes"].items()
            ],
        }
        for entry in studies.values()
    ]


def study_unit_grids(study: Study) -> dict[int, Any]:
    """``{unit index: RenderedGrid}``: each unit's top-overall (ND'18) grid in the study's extraction, for the
    report's thumbnails (empty without an extraction)."""
    if not study.extraction_id:
        return {}
    sets = (
        ExemplarSet.objects.filter(extraction_id=study.extraction_id, kind=ExemplarKind.TOP_OVERALL)
        .exclude(grid=None)
        .select_related("unit", "grid")
    )
    return {exemplar.unit.index: exemplar.grid for exemplar in sets}
