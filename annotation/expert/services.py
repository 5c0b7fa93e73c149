"""Writes of expert studies: studies, the atomic next-task claim, judgments, imports, simulated raters, synonyms.

Every function is keyword-only and typed. Expected user errors raise :class:`StudyInputError` with a
readable message (pages show it on the form, commands as their error).
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from django.core import signing
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from accounts.roles import Role
from analysis.models import ExemplarKind, ExemplarSet, LayerExtraction
from analysis.selectors import dead_unit_ids
from unitscope.spreadsheets import spreadsheet_unquote

from .. import claims
from ..common import InputError
from ..models import (
    ANSWER_ORDER,
    CONCEPT_MAX_LENGTH,
    DEFAULT_INSTRUCTIONS,
    YES_ANSWERS,
    Assignment,
    ConceptSynonym,
    Judgment,
    JudgmentOrigin,
    RaterKind,
    Study,
    StudyKind,
    StudyPlan,
    StudyRater,
    StudyTask,
)
from ..naming import normalise_concept_name, strip_broden_suffix
from . import simulation

ITEM_MAX_LENGTH = 200
MAX_CLAIM_HOURS = 720
RATER_NAME_MAX_LENGTH = 150
SHOWN_TOKEN_SALT = "annotation.task-shown"
SHOWN_TOKEN_MAX_AGE = 24 * 3600


class StudyInputError(InputError):
    """An expected user error: bad study parameters, a bad answer, a malformed import file."""


# -- studies --------------------------------------------------------------------------------------------


def _clean_name(name: str) -> str:
    name = " ".join(str(name).split())
    if not name:
        raise StudyInputError("A study needs a name.")
    if len(name) > 200:
        raise StudyInputError("A study name has at most 200 characters.")
    return name


def _study_name_free(name: str) -> None:
    if Study.objects.filter(name=name).exists():
        raise StudyInputError(f"A study named {name!r} already exists.")


def _split_classes(classes: Sequence[str], overlap: str, n_experts: int) -> dict[str, int | None]:
    """Paper plan: the overlap class to everyone (None), the others round-robin to expert 0, 1, …"""
    owners: dict[str, int | None] = {overlap: None}
    for position, name in enumerate(name for name in classes if name != overlap):
        owners[name] = position % n_experts
    return owners


@transaction.atomic
def study_create(
    *,
    name: str,
    extraction: LayerExtraction,
    experts: Sequence[Any],
    plan: str = StudyPlan.PAPER,
    object_classes: Sequence[str] | None = None,
    overlap_class: str | None = None,
    raters_per_task: int = 2,
    instructions: str = DEFAULT_INSTRUCTIONS,
    units: Sequence[int] | None = None,
    seed: int = 0,
    description: str = "",
    claim_hours: int = 24,
    suggest_given_names: bool = True,
    include_dead_units: bool = False,
    created_by=None,
) -> Study:
    """Create a study of one layer's units: one task per (unit, object class) showing its top-10 grid.

    ``object_classes``: names among the extraction's classes (default: all). ``units``: unit indices
    (default: every unit of the layer). Plans (GG'18 §4.1 is ``paper``): ``paper`` splits the classes
    round-robin between the experts, except ``overlap_class`` (default: the first class) which every
    expert does, for agreement; ``full``: every expert does every task; ``n_raters``: each task is done
    by ``raters_per_task`` experts, whoever asks first. Every grid must be rendered. ``suggest_given_names``:
    whether the name field suggests what the other experts answered (GG'18 does not say; on by default, as
    the issue asked, off for raters who must stay independent). ``claim_hours``: how long a task an expert
    took stays theirs unanswered once nothing else is free (0: for good; see :func:`stale_claims_release`).
    Dead and saturated units (``analysis.models.UnitStatus``: their grids highlight nothing or everything) get
    no task unless ``include_dead_units``.
    """
    name = _clean_name(name)
    _study_name_free(name)
    if plan not in StudyPlan.values:
        raise StudyInputError(f"Unknown plan {plan!r}; choose one of {', '.join(StudyPlan.values)}.")
    experts = list(dict.fromkeys(experts))
    if not experts:
        raise StudyInputError("Choose at least one expert.")
    for user in experts:
        if not user.has_role(Role.EXPERT):
            raise StudyInputError(f"{user.get_username()} is not an expert annotator.")
    available = list(extraction.class_names or [])
    classes = list(dict.fromkeys(object_classes)) if object_classes else available
    unknown = [name for name in classes if name not in available]
    if unknown:
        raise StudyInputError(
            f"{', '.join(unknown)}: not an object class of this extraction (classes: {', '.join(available) or 'none'})."
        )
    if not classes:
        raise StudyInputError("This extraction has no object classes: GG'18 studies need one class per image.")
    if plan == StudyPlan.PAPER:
        overlap_class = overlap_class or classes[0]
        if overlap_class not in classes:
            raise StudyInputError(f"The overlap class {overlap_class!r} is not among the study's classes.")
    else:
        overlap_class = None
    if not 0 <= claim_hours <= MAX_CLAIM_HOURS:
        raise StudyInputError(f"Hours an expert keeps a task: between 0 and {MAX_CLAIM_HOURS}.")
    if plan == StudyPlan.N_RATERS and not 1 <= raters_per_task <= len(experts):
        raise StudyInputError(f"Raters per task must lie between 1 and the number of experts ({len(experts)}).")

    sets = (
        ExemplarSet.objects.filter(extraction=extraction, kind=ExemplarKind.TOP_CLASS, object_class__name__in=classes)
        .select_related("unit", "object_class")
        .order_by("unit__index")
    )
    if units is not None:
        sets = sets.filter(unit__index__in=list(units))
    if not include_dead_units:
        dead = dead_unit_ids(extraction)
        if dead and not sets.exclude(unit_id__in=dead).exists() and sets.exists():
            raise StudyInputError(
                "Every chosen unit is dead or saturated (it never fires, or its threshold is 0): "
                "choose live units, or include dead units on purpose."
            )
        sets = sets.exclude(unit_id__in=dead)
    sets = list(sets)
    if not sets:
        raise StudyInputError("No top-10 exemplar sets match these classes and units.")
    if any(exemplar.grid_id is None for exemplar in sets):
        raise StudyInputError(
            f"Some grids of {extraction.layer.name} are not rendered yet: render the layer's "
            "grids first (python manage.py render_grids)."
        )

    study = Study.objects.create(
        name=name,
        kind=StudyKind.NETWORK,
        layer=extraction.layer,
        extraction=extraction,
        plan=plan,
        raters_per_task=raters_per_task if plan == StudyPlan.N_RATERS else len(experts),
        instructions=instructions.strip() or DEFAULT_INSTRUCTIONS,
        seed=seed,
        description=description,
        claim_hours=claim_hours,
        suggest_given_names=suggest_given_names,
        include_dead_units=include_dead_units,
        created_by=created_by,
    )
    concepts = {exemplar.object_class.name: exemplar.object_class for exemplar in sets}
    study.object_classes.set([concepts[name] for name in classes if name in concepts])
    if overlap_class:
        study.overlap_class = concepts.get(overlap_class)
        study.save(update_fields=["overlap_class"])
    raters = [
        StudyRater.objects.create(study=study, kind=RaterKind.EXPERT, user=user, name=user.get_username())
        for user in experts
    ]
    owners = _split_classes(classes, overlap_class, len(raters)) if plan == StudyPlan.PAPER else {}
    class_order = [overlap_class] + [c for c in classes if c != overlap_class] if overlap_class else classes
    by_class: dict[str, list[ExemplarSet]] = {}
    for exemplar in sets:
        by_class.setdefault(exemplar.object_class.name, []).append(exemplar)
    rng = np.random.default_rng(seed)
    tasks, position = [], 0
    for class_name in class_order:
        members = by_class.get(class_name, [])
        for index in rng.permutation(len(members)):
            exemplar = members[int(index)]
            owner_index = owners.get(class_name)
            if plan == StudyPlan.PAPER:
                owner = raters[owner_index] if owner_index is not None else None
                capacity = 1 if owner is not None else len(raters)
            else:
                owner, capacity = None, study.raters_per_task
            tasks.append(
                StudyTask(
                    study=study,
                    position=position,
                    item=f"{exemplar.unit.index}/{class_name}",
                    unit=exemplar.unit,
                    object_class=exemplar.object_class,
                    exemplar_set=exemplar,
                    owner=owner,
                    capacity=capacity,
                )
            )
            position += 1
    StudyTask.objects.bulk_create(tasks, batch_size=1000)
    return study


# -- the next task (atomic) -------------------------------------------------------------------------------


def task_next_for_rater(*, rater: StudyRater, now: datetime | None = None) -> StudyTask | None:
    """The task ``rater`` should answer now: the one they hold unanswered, or a newly claimed one.

    Atomic: a rater never holds a task twice, and a task is never held by more experts than its
    capacity (1, or the plan's overlap). Requests of one rater are serialised by locking the rater row;
    on PostgreSQL candidates are read ``FOR UPDATE SKIP LOCKED`` so experts claiming at once take
    different rows without waiting; on SQLite the transaction begins IMMEDIATE (settings), so claims are
    serialised by the database's write lock. Either way the claim itself is a conditional UPDATE
    (``assigned_count < capacity``) that cannot over-fill a task. Returns None when nothing is left.
    On PostgreSQL the claim is one SQL statement (:mod:`annotation.claims`), this code's twin, and the database's
    constraint ``one_open_assignment_per_rater`` serialises one rater's claims instead of the row lock.
    When nothing is free, the tasks other experts took but left unanswered for longer than the study's
    ``claim_hours`` go back to the pool (:func:`stale_claims_release`) and the claim is tried once more.
    """
    task = _task_claim(rater)
    if task is None and stale_claims_release(study=rater.study, now=now):
        task = _task_claim(rater)
    return task


def _task_claim(rater: StudyRater) -> StudyTask | None:
    if claims.claims_in_sql():
        return claims.task_claim(rater)
    with transaction.atomic():
        StudyRater.objects.select_for_update().filter(pk=rater.pk).first()
        held = (
            Assignment.objects.filter(rater=rater, completed_at__isnull=True)
            .select_related("task")
            .order_by("task__position", "task_id")
            .first()
        )
        if held is not None:
            return held.task
        candidates = (
            StudyTask.objects.filter(study_id=rater.study_id, assigned_count__lt=F("capacity"))
            .filter(Q(owner__isnull=True) | Q(owner=rater))
            .exclude(assignments__rater=rater)
            .order_by("position", "id")
        )
        if connection.features.has_select_for_update_skip_locked:
            candidates = candidates.select_for_update(skip_locked=True, of=("self",))
        for task in candidates[:8]:
            claimed = StudyTask.objects.filter(pk=task.pk, assigned_count__lt=F("capacity")).update(
                assigned_count=F("assigned_count") + 1
            )
            if claimed:
                Assignment.objects.create(task=task, rater=rater)
                task.assigned_count += 1
                return task
    return None


def stale_claims_release(*, study: Study, now: datetime | None = None) -> int:
    """Give back the places of the study's tasks that experts took but left unanswered for longer than its
    ``claim_hours`` (0: never); how many. The assignment is deleted and the task's place freed, so whoever asks
    next may take it, the expert who left it included (their open page can still save the answer while the
    place is free: :func:`task_reclaim`). Each is released at most once (a conditional delete), and an answer
    being saved at that instant holds the assignment's row lock (:func:`judgment_submit`), so it is never lost.
    """
    if not study.claim_hours:
        return 0
    cutoff = (now or timezone.now()) - timedelta(hours=study.claim_hours)
    stale = Assignment.objects.filter(task__study=study, completed_at__isnull=True, assigned_at__lt=cutoff)
    released = 0
    for pk, task_id in stale.values_list("pk", "task_id"):
        with transaction.atomic():
            if Assignment.objects.filter(pk=pk, completed_at__isnull=True).delete()[0]:
                StudyTask.objects.filter(pk=task_id).update(assigned_count=F("assigned_count") - 1)
                released += 1
    return released


def task_reclaim(*, rater: StudyRater, task: StudyTask) -> bool:
    """Give ``rater`` back a task of theirs that went back to the pool (:func:`stale_claims_release`), if it still
    has a free place and they hold no other unanswered task; whether it is theirs again."""
    if task.study_id != rater.study_id or (task.owner_id not in (None, rater.pk)):
        return False
    try:
        with transaction.atomic():
            if Assignment.objects.filter(task=task, rater=rater).exists():
                return True
            if not StudyTask.objects.filter(pk=task.pk, assigned_count__lt=F("capacity")).update(
                assigned_count=F("assigned_count") + 1
            ):
                return False
            Assignment.objects.create(task=task, rater=rater)
    except IntegrityError:  # they hold another task (one open assignment per rater)
        return False
    return True


# -- judgments -------------------------------------------------------------------------------------------


def concept_clean(text: str | None) -> str:
    """Trim, collapse whitespace, drop control characters; at most CONCEPT_MAX_LENGTH characters."""
    text = re.sub(r"[\x00-\x1f\x7f]", " ", text or "")
    text = " ".join(text.split())
    if len(text) > CONCEPT_MAX_LENGTH:
        raise StudyInputError(f"A concept name has at most {CONCEPT_MAX_LENGTH} characters.")
    return text


def answer_validate(answer: str, concept: str | None) -> tuple[str, str]:
    """The answer and its cleaned concept name; a name is required for the three yes-answers."""
    if answer not in ANSWER_ORDER:
        raise StudyInputError(f"Unknown answer {answer!r}.")
    concept = concept_clean(concept)
    if answer in YES_ANSWERS:
        if not concept:
            raise StudyInputError("Name the concept the highlighted areas cover.")
        return answer, concept
    return answer, ""


def task_shown_token(*, task: StudyTask, rater: StudyRater, now: float | None = None) -> str:
    """A signed note of when ``task`` was shown to ``rater`` (sent back with the answer to time it)."""
    return signing.dumps(
        {"task": task.pk, "rater": rater.pk, "t": round(now if now is not None else time.time(), 3)},
        salt=SHOWN_TOKEN_SALT,
    )


def task_shown_at(*, token: str | None, task: StudyTask, rater: StudyRater) -> datetime | None:
    """When the task was shown, from a token of :func:`task_shown_token` (None if absent or not ours)."""
    if not token:
        return None
    try:
        data = signing.loads(token, salt=SHOWN_TOKEN_SALT, max_age=SHOWN_TOKEN_MAX_AGE)
    except signing.BadSignature:
        return None
    if data.get("task") != task.pk or data.get("rater") != rater.pk:
        return None
    return datetime.fromtimestamp(float(data["t"]), tz=UTC)


def judgment_submit(
    *,
    rater: StudyRater,
    task: StudyTask,
    answer: str,
    concept: str | None = "",
    started_at: datetime | None = None,
    submitted_at: datetime | None = None,
    origin: str = JudgmentOrigin.WEB,
) -> Judgment:
    """Record ``rater``'s answer to ``task``: a first judgment, or a revision (a new row) of their current one.

    Experts may only answer tasks they hold (an assignment). Submitting the same answer and name again
    (a double Enter) returns the current judgment instead of adding a row.
    """
    answer, concept = answer_validate(answer, concept)
    if task.study_id != rater.study_id:
        raise StudyInputError("This task belongs to another study.")
    submitted_at = submitted_at or timezone.now()
    with transaction.atomic():
        StudyRater.objects.select_for_update().filter(pk=rater.pk).first()
        # Locked: a stale-claim release (stale_claims_release) waits for this answer, then finds it answered.
        assignment = Assignment.objects.select_for_update().filter(task=task, rater=rater).first()
        if rater.kind == RaterKind.EXPERT and assignment is None:
            raise StudyInputError("This task is not assigned to you.")
        current = Judgment.objects.current().filter(task=task, rater=rater).first()
        if current is not None and (current.answer, current.concept) == (answer, concept):
            return current
        seconds = None
        if started_at is not None and started_at <= submitted_at:
            seconds = round((submitted_at - started_at).total_seconds(), 3)
        grid_id = task.exemplar_set.grid_id if task.exemplar_set_id else None
        judgment = Judgment.objects.create(
            task=task,
            rater=rater,
            answer=answer,
            concept=concept,
            started_at=started_at,
            submitted_at=submitted_at,
            seconds=seconds,
            revision_of=current,
            simulated=rater.kind == RaterKind.SIMULATED,
            origin=origin,
            grid_id=grid_id,
        )
        if assignment is not None and assignment.completed_at is None:
            Assignment.objects.filter(pk=assignment.pk).update(completed_at=submitted_at)
    return judgment


# -- import --------------------------------------------------------------------------------------------

IMPORT_COLUMNS = ("item", "rater", "answer")
IMPORT_ANSWERS = {answer: answer for answer in ANSWER_ORDER}


class ImportProblems(StudyInputError):
    """A malformed import file: every bad row, by line (``None`` for the file as a whole)."""

    def __init__(self, problems: Iterable[tuple[int | None, str]]):
        self.problems = list(problems)
        super().__init__(self.message)

    @property
    def message(self) -> str:
        lines = [f"line {line}: {message}" if line is not None else message for line, message in self.problems]
        return f"{len(self.problems)} problem(s), nothing imported:\n" + "\n".join(lines)

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class ImportRow:
    line: int
    item: str
    rater: str
    answer: str
    concept: str


def judgments_parse(text: str) -> list[ImportRow]:
    """Validate every row of an import CSV (``item,rater,answer[,concept]``); raise with all problems."""
    # newline="" as the csv module asks: "\r" and "\r\n" line ends parse like "\n", quoted newlines stay in cells.
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        return _judgment_rows(reader)
    except csv.Error as error:
        raise ImportProblems([(reader.line_num or None, f"not readable as CSV: {error}")]) from error


def _judgment_rows(reader) -> list[ImportRow]:
    problems: list[tuple[int | None, str]] = []
    header = next(reader, None)
    if header is None:
        raise ImportProblems([(None, "the file is empty")])
    columns = [column.strip().lower().lstrip("\ufeff") for column in header]
    missing = [column for column in IMPORT_COLUMNS if column not in columns]
    unknown = [column for column in columns if column not in IMPORT_COLUMNS + ("concept",)]
    if missing or unknown or len(set(columns)) != len(columns):
        raise ImportProblems(
            [(1, f"the header must be item,rater,answer[,concept] (found {','.join(header) or 'nothing'})")]
        )
    position = {column: columns.index(column) for column in columns}
    rows: list[ImportRow] = []
    seen: dict[tuple[str, str], int] = {}
    for raw in reader:
        line = reader.line_num
        if not raw or not any(cell.strip() for cell in raw):
            continue
        if len(raw) != len(columns):
            problems.append((line, f"expected {len(columns)} columns, found {len(raw)}"))
            continue
        # A cell our exports neutralised ("'=x", see unitscope/spreadsheets.py) reads back as written.
        cells = {column: spreadsheet_unquote(raw[position[column]].strip()) for column in columns}
        item, rater, answer = cells["item"], cells["rater"], cells["answer"].lower().replace("-", "_").replace(" ", "_")
        row_problems = []
        if not item:
            row_problems.append("empty item")
        elif len(item) > ITEM_MAX_LENGTH:
            row_problems.append(f"item longer than {ITEM_MAX_LENGTH} characters")
        if not rater:
            row_problems.append("empty rater")
        elif len(rater) > RATER_NAME_MAX_LENGTH:
            row_problems.append(f"rater longer than {RATER_NAME_MAX_LENGTH} characters")
        if answer not in IMPORT_ANSWERS:
            row_problems.append(f"answer {cells['answer']!r} is not one of {', '.join(ANSWER_ORDER)}")
        try:
            concept = concept_clean(cells.get("concept", ""))
        except StudyInputError as error:
            row_problems.append(str(error))
            concept = ""
        if item and rater and (item, rater) in seen:
            row_problems.append(f"rater {rater!r} already answered item {item!r} on line {seen[(item, rater)]}")
        if row_problems:
            problems.append((line, "; ".join(row_problems)))
            continue
        seen[(item, rater)] = line
        rows.append(ImportRow(line, item, rater, answer, concept if answer in YES_ANSWERS else ""))
    if not problems and not rows:
        problems.append((None, "the file has no judgments"))
    if problems:
        raise ImportProblems(problems)
    return rows


IMPORT_BATCH = 1000
"""Rows per INSERT statement of a judgment import."""


def judgments_import(
    *, study_name: str, path: str | Path | None = None, text: str | None = None, created_by=None
) -> dict[str, Any]:
    """Import judgments collected elsewhere into a study of imported items (created if absent).

    Every row is validated first; on any problem nothing is imported and :class:`ImportProblems`
    lists them by line. A rater answering an item again in a later file adds a revision (never an
    overwrite); the same answer again is skipped. Returns counts.
    """
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise StudyInputError(f"{path}: no such file") from None
        except UnicodeDecodeError as error:
            raise ImportProblems([(None, f"the file is not UTF-8 text ({error.reason})")]) from None
    rows = judgments_parse(text)
    name = _clean_name(study_name)
    now = timezone.now()
    with transaction.atomic():
        study = Study.objects.select_for_update().filter(name=name).first()
        created_study = study is None
        if study is None:
            study = Study.objects.create(
                name=name,
                kind=StudyKind.IMPORTED,
                plan=StudyPlan.FULL,
                instructions=DEFAULT_INSTRUCTIONS,
                created_by=created_by,
                description="Judgments imported from a file.",
            )
        elif study.kind != StudyKind.IMPORTED:
            raise StudyInputError(f"Study {name!r} is a study of network units; import into a new name.")
        # In bulk (a few statements whatever the file's size: 10,000 rows once took longer than a request may):
        # the new raters and items, every current judgment of the study, then the new judgments.
        raters = {rater.name: rater for rater in study.raters.all()}
        tasks = {task.item: task for task in study.tasks.all()}
        next_position = max((task.position for task in tasks.values()), default=-1) + 1
        new_raters = list(dict.fromkeys(row.rater for row in rows if row.rater not in raters))
        StudyRater.objects.bulk_create(
            [StudyRater(study=study, kind=RaterKind.IMPORTED, name=name) for name in new_raters],
            batch_size=IMPORT_BATCH,
        )
        new_items = list(dict.fromkeys(row.item for row in rows if row.item not in tasks))
        StudyTask.objects.bulk_create(
            [
                StudyTask(study=study, position=next_position + offset, item=item, capacity=0)
                for offset, item in enumerate(new_items)
            ],
            batch_size=IMPORT_BATCH,
        )
        if new_raters:
            raters = {rater.name: rater for rater in study.raters.all()}
        if new_items:
            tasks = {task.item: task for task in study.tasks.all()}
        current = {
            (judgment.task_id, judgment.rater_id): judgment
            for judgment in Judgment.objects.current()
            .filter(task__study=study)
            .only("pk", "task_id", "rater_id", "answer", "concept")
        }
        counts = {"created": 0, "revised": 0, "unchanged": 0}
        judgments = []
        for row in rows:  # an (item, rater) pair appears once per file (judgments_parse refuses repeats)
            rater, task = raters[row.rater], tasks[row.item]
            previous = current.get((task.pk, rater.pk))
            if previous is not None and (previous.answer, previous.concept) == (row.answer, row.concept):
                counts["unchanged"] += 1
                continue
            judgments.append(
                Judgment(
                    task=task,
                    rater=rater,
                    answer=row.answer,
                    concept=row.concept,
                    submitted_at=now,
                    revision_of=previous,
                    origin=JudgmentOrigin.IMPORTED,
                    source_line=row.line,
                )
            )
            counts["revised" if previous else "created"] += 1
        Judgment.objects.bulk_create(judgments, batch_size=IMPORT_BATCH)
    return {
        "study": study.name,
        "study_id": study.pk,
        "created_study": created_study,
        "rows": len(rows),
        "items": len(tasks),
        "raters": len(raters),
        **counts,
    }


# -- simulated raters -------------------------------------------------------------------------------------


def simulated_raters_run(
    *,
    study: Study,
    raters: int = 2,
    error_rate: float | None = None,
    seed: int = 0,
    truth: dict[int, tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """Let ``raters`` simulated raters answer every task of a network study from the dataset's truth.

    Raters are named ``simulated-1`` … and keep the error rate and seed they were created with; running
    again only answers tasks they have not answered (idempotent). Their judgments are flagged simulated.
    """
    if study.kind != StudyKind.NETWORK or study.extraction_id is None:
        raise StudyInputError("Simulated raters need a study of network units (with a dataset's truth).")
    if not 1 <= raters <= 20:
        raise StudyInputError("Between 1 and 20 simulated raters.")
    error_rate = simulation.DEFAULT_ERROR_RATE if error_rate is None else float(error_rate)
    if not 0.0 <= error_rate <= 1.0:
        raise StudyInputError("The error rate lies between 0 and 1.")
    names = [f"simulated-{number}" for number in range(1, raters + 1)]
    n_tasks = study.tasks.filter(exemplar_set__isnull=False).count()
    finished = (
        StudyRater.objects.filter(study=study, kind=RaterKind.SIMULATED, name__in=names)
        .annotate(answered=Count("judgments", filter=Q(judgments__revision_of__isnull=True)))
        .filter(answered__gte=n_tasks)
        .count()
    )
    if truth is None and finished == raters:  # every task answered already: skip reading the truth
        return {
            "study": study.name,
            "raters": raters,
            "error_rate": error_rate,
            "seed": seed,
            "judgments_created": 0,
            "tasks": n_tasks,
            "truth_counts": {},
        }
    truth = truth if truth is not None else simulation.study_ground_truth(study)
    tasks = list(study.tasks.filter(pk__in=list(truth)).order_by("position"))
    dataset = study.extraction.dataset
    wrong_names = sorted(
        {
            strip_broden_suffix(name)
            for name in dataset.concepts.filter(category__in=["part", "material", "color"]).values_list(
                "name", flat=True
            )
        }
    ) or ["something"]
    answered = 0
    now = timezone.now()
    with transaction.atomic():
        for number in range(1, raters + 1):
            rater, _ = StudyRater.objects.get_or_create(
                study=study,
                name=f"simulated-{number}",
                defaults={"kind": RaterKind.SIMULATED, "params": {"error_rate": error_rate, "seed": seed}},
            )
            if rater.kind != RaterKind.SIMULATED:
                raise StudyInputError(f"A rater named {rater.name} exists and is not simulated.")
            rate, rater_seed = rater.params.get("error_rate", error_rate), rater.params.get("seed", seed)
            done = set(Judgment.objects.filter(rater=rater).values_list("task_id", flat=True))
            rows = []
            for task in tasks:
                if task.pk in done:
                    continue
                rng = np.random.default_rng([int(rater_seed), number, task.position])
                answer, concept = simulation.simulated_answer(
                    truth[task.pk], error_rate=rate, rng=rng, wrong_names=wrong_names
                )
                rows.append(
                    Judgment(
                        task=task,
                        rater=rater,
                        answer=answer,
                        concept=concept,
                        submitted_at=now,
                        simulated=True,
                        origin=JudgmentOrigin.SIMULATED,
                        grid_id=task.exemplar_set.grid_id if task.exemplar_set_id else None,
                    )
                )
            Judgment.objects.bulk_create(rows, batch_size=1000)
            answered += len(rows)
    counts: dict[str, int] = {}
    for answer, _ in truth.values():
        counts[answer] = counts.get(answer, 0) + 1
    return {
        "study": study.name,
        "raters": raters,
        "error_rate": error_rate,
        "seed": seed,
        "judgments_created": answered,
        "tasks": len(tasks),
        "truth_counts": counts,
    }


# -- name matching -----------------------------------------------------------------------------------------


def synonym_set(*, study: Study, name: str, maps_to: str, user=None) -> ConceptSynonym:
    """Make ``name`` count as ``maps_to`` when the study's names are matched (creates or replaces the entry).

    Both are normalised first (without synonyms); a name that normalises to nothing, or to the same key as
    its target, is refused.
    """
    key, target = normalise_concept_name(name), normalise_concept_name(maps_to)
    if not key or not target:
        raise StudyInputError("A synonym needs a name and the name it maps to.")
    if len(key) > CONCEPT_MAX_LENGTH or len(target) > CONCEPT_MAX_LENGTH:
        raise StudyInputError(f"Names have at most {CONCEPT_MAX_LENGTH} characters.")
    if key == target:
        raise StudyInputError(f"{name!r} and {maps_to!r} already match (both normalise to {key!r}).")
    synonym, _ = ConceptSynonym.objects.update_or_create(
        study=study, name=key, defaults={"maps_to": target, "created_by": user}
    )
    return synonym


def synonym_delete(*, study: Study, synonym_id: int) -> bool:
    """Remove one of the study's synonyms; False when it does not exist."""
    deleted, _ = ConceptSynonym.objects.filter(study=study, pk=synonym_id).delete()
    return bool(deleted)
