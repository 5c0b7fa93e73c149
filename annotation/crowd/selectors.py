"""Reads of crowd studies: canonical descriptions, study progress, HIT and assignment lists, worker quality, the
signals of careless or automated answering (issue 8 items 2 and 4), and a HIT's dynamic-overlap decision.

Pure helpers (:func:`canonical_description`, :func:`longest_streak`, :func:`careless_signals`) need no database.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, F, FloatField, OuterRef, Q, Subquery, Sum, Value
from django.db.models.functions import Cast, Coalesce, NullIf

from ..models import (
    SUBMITTED_STATES,
    CrowdAssignment,
    CrowdAssignmentState,
    CrowdStudy,
    CrowdTaskKind,
    CrowdWorker,
    Hit,
    HitRole,
)
from ..naming import normalise_concept_name
from . import aggregation

FAST_FRACTION = 0.3
"""A worker is "fast" when their median time on task is below this share of the study's median (our choice)."""
STREAK_MIN = 8
"""An identical-answer streak shorter than this is never flagged (our choice)."""
STREAK_P = 0.001
"""A streak is flagged only when an honest worker would reach it with probability below this
(:func:`streak_test`): a study whose right answer is mostly "yes" gives honest workers long runs of "yes" (our
choice; 60 honest workers expect at most 0.06 false flags; checked at scale in ``tests/test_crowd_streaks.py``)."""
STREAK_RELIABILITY_MIN = 0.6
"""The streak signal's honest worker is right at least this often (our choice: the default ``block_below``, the
gold accuracy under which a study blocks a worker anyway); see :func:`streak_test`."""
SIGNAL_MIN_ANSWERS = 3
"""Signals need at least this many answers of the worker."""


# -- canonical descriptions (ND'18 §3.1) -------------------------------------------------------------------------


@dataclass(frozen=True)
class Canonical:
    text: str
    agreed: bool
    confidence: int
    votes: int


def canonical_description(answers: Sequence[tuple[str, int]]) -> Canonical | None:
    """ND'18 §3.1: "the most common description of a unit (when raters agreed), and the highest-confidence
    description (when raters did not agree)". ``answers``: ``(phrase, confidence 1–5)`` in submission order.

    Raters agree when at least two phrases normalise (:func:`normalise_concept_name`) to the same key; the most
    common key wins (a tie goes to the larger summed confidence, then to the earliest). The text returned is the
    group's highest-confidence phrase (the earliest among equals). Without agreement: the highest-confidence
    phrase, the earliest among equals. None without any non-empty phrase.
    """
    items = [
        (position, " ".join(text.split()), int(confidence))
        for position, (text, confidence) in enumerate(answers)
        if text and text.strip()
    ]
    if not items:
        return None
    groups: dict[str, list[tuple[int, str, int]]] = {}
    for item in items:
        groups.setdefault(normalise_concept_name(item[1]) or item[1].lower(), []).append(item)
    best = max(groups.values(), key=lambda group: (len(group), sum(c for _, _, c in group), -group[0][0]))
    if len(best) >= 2:
        _position, text, confidence = max(best, key=lambda item: (item[2], -item[0]))
        return Canonical(text=text, agreed=True, confidence=confidence, votes=len(best))
    _position, text, confidence = max(items, key=lambda item: (item[2], -item[0]))
    return Canonical(text=text, agreed=False, confidence=confidence, votes=1)


def canonical_descriptions_for(*, unit_ids: Iterable[int], study: CrowdStudy | None = None) -> dict[int, dict]:
    """Per unit: the canonical description from a description study (the given one, else the newest covering
    the unit), as ``{unit_id: {"text", "study", "hit", "agreed", "confidence"}}``. Units without answers are left
    out. Uses :func:`canonical_description` (ND'18 §3.1's rule)."""
    hits = (
        Hit.objects.filter(kind=CrowdTaskKind.DESCRIPTION, role=HitRole.TASK, unit_id__in=list(unit_ids))
        .select_related("study")
        .order_by("-study__created_at", "-study_id")
    )
    if study is not None:
        hits = hits.filter(study=study)
    answers: dict[int, list[tuple[str, int]]] = {}
    for hit_id, text, confidence in (
        CrowdAssignment.objects.answered()
        .filter(hit__in=hits)
        .order_by("submitted_at", "id")
        .values_list("hit_id", "description", "confidence")
    ):
        answers.setdefault(hit_id, []).append((text, confidence or 1))
    result: dict[int, dict] = {}
    for hit in hits:
        if hit.unit_id in result or not answers.get(hit.pk):
            continue
        chosen = canonical_description(answers[hit.pk])
        if chosen is not None:
            result[hit.unit_id] = {
                "text": chosen.text,
                "study": hit.study_id,
                "hit": hit.pk,
                "agreed": chosen.agreed,
                "confidence": chosen.confidence,
            }
    return result


# -- careless / automated answering ------------------------------------------------------------------------------


def longest_streak(values: Sequence[Any]) -> int:
    """The longest run of equal consecutive values (0 for none)."""
    best = run = 0
    previous = object()
    for value in values:
        run = run + 1 if value == previous else 1
        previous = value
        best = max(best, run)
    return best


def answer_key(assignment: CrowdAssignment, kind: str) -> Any:
    """What "the same answer" means per kind: yes/no or the image picked (forced choice), the normalised phrase,
    the count."""
    if kind in (CrowdTaskKind.VALIDATION, CrowdTaskKind.FORCED_CHOICE):
        return assignment.answer
    if kind == CrowdTaskKind.DESCRIPTION:
        return normalise_concept_name(assignment.description)
    return assignment.count


def longest_streaks(values: Sequence[Any]) -> dict[Any, int]:
    """The longest run of each distinct value among consecutive ``values``."""
    best: dict[Any, int] = {}
    run, previous = 0, object()
    for value in values:
        run = run + 1 if value == previous else 1
        previous = value
        best[value] = max(best.get(value, 0), run)
    return best


@dataclass(frozen=True)
class Streak:
    """A worker's most improbable run of one answer: the answer, the run's length, and how probable so long a run
    of it is for an honest worker (:func:`streak_test`)."""

    value: Any
    length: int
    p_value: float


def honest_share_bound(*, consensus: float, pooled: float, reliability_min: float) -> float:
    """The largest probability with which an honest worker gives one answer, from its share of the HITs'
    consensus answers (``consensus``) and of all answers (``pooled``): a worker right with probability r ≥
    ``reliability_min`` gives it on the HITs where it is right (r · consensus) and at most on every HIT where it is
    not when wrong ((1 − r) · (1 − consensus)), the most at r = 1 or r = ``reliability_min``; the pooled share
    stays in for a sample whose consensus is odd. Exact for yes/no answers."""
    low = reliability_min * consensus + (1 - reliability_min) * (1 - consensus)
    return max(consensus, low, pooled)


def streak_test(
    answers: Sequence[Any],
    *,
    answer_shares: Mapping[Any, float],
    consensus_shares: Mapping[Any, float] | None = None,
    reliability_min: float = STREAK_RELIABILITY_MIN,
    min_length: int = 1,
) -> Streak | None:
    """The most improbable of a worker's streaks (their longest run of each answer, of at least ``min_length``) for
    an honest worker — one who answers the HITs in a random order, independently, right with a probability of at
    least ``reliability_min``. Per answer v with longest run L_v: p_v = P(a run of v of L_v or more in as many
    answers) (:func:`annotation.crowd.aggregation.value_run_p_value`) at the largest share an honest worker may
    give v (:func:`honest_share_bound`, from ``consensus_shares``, each answer's share of the HITs' consensus
    answers, :func:`consensus_shares`, and ``answer_shares``, its share of all the study's answers); the p-value
    is min(1, k · min_v p_v) over the study's k distinct answers (Bonferroni: valid whichever answer the streak is
    of). None without a run of ``min_length``.

    Why not the pooled shares alone, as this signal first had (found by ``tests/test_crowd_streaks.py``): an honest
    yes/no worker of reliability r says "yes" with a probability between the consensus share of "yes" (r = 1) and
    nearer ½ (smaller r), and the pooled share lies in between. The most careful workers have the most lopsided
    shares and so the longest runs of the common answer, the least careful the longest of the rare one: under
    the pooled shares, in a study whose consensus is "yes" for 85% of its HITs, 0.3–1% of honest workers of
    reliability 0.6–0.98 reached p < 0.001 and 2.5–4% p < 0.01 (1,200 simulated workers, three seeds), 3 to 10
    times the nominal rate. Why per answer: the longest run of any answer is mostly one of the common answer, so a
    worker stuck on the rare one hid behind their ordinary runs of the common one."""
    runs = {value: length for value, length in longest_streaks(answers).items() if length >= min_length}
    if not runs:
        return None
    consensus = consensus_shares or answer_shares
    values = set(answer_shares) | set(consensus) | set(runs)
    found = [
        Streak(
            value,
            length,
            aggregation.value_run_p_value(
                len(answers),
                length,
                honest_share_bound(
                    consensus=consensus.get(value, 0.0),
                    pooled=answer_shares.get(value, 0.0),
                    reliability_min=reliability_min,
                ),
            ),
        )
        for value, length in runs.items()
    ]
    most = min(found, key=lambda streak: (streak.p_value, -streak.length))
    return Streak(most.value, most.length, min(1.0, len(values) * most.p_value))


def careless_signals(
    *,
    seconds: Sequence[float],
    study_median: float | None,
    answers: Sequence[Any],
    pasted: int,
    fast_fraction: float = FAST_FRACTION,
    streak_min: int = STREAK_MIN,
    answer_shares: Mapping[Any, float] | None = None,
    consensus_shares: Mapping[Any, float] | None = None,
    reliability_min: float = STREAK_RELIABILITY_MIN,
    streak_p: float = STREAK_P,
) -> list[str]:
    """Readable flags of careless or automated answering for one worker (REFERENCE.md: 33–46% of MTurk workers
    used language models on text tasks): time on task far below the study's median, long streaks of identical
    answers, descriptions pasted rather than typed. With ``answer_shares`` (the study's share of each distinct
    answer) and ``consensus_shares`` (of each HIT's consensus answer) a streak of at least ``streak_min`` is
    flagged only when it is improbable (p < ``streak_p``, :func:`streak_test`) for an honest worker; without
    them every such streak is."""
    flags = []
    if len(seconds) >= SIGNAL_MIN_ANSWERS and study_median:
        median = statistics.median(seconds)
        if median < fast_fraction * study_median:
            flags.append(f"fast: median {median:.1f} s vs study median {study_median:.1f} s")
    if len(answers) >= SIGNAL_MIN_ANSWERS:
        if answer_shares is None:
            if (streak := longest_streak(answers)) >= streak_min:
                flags.append(f"streak: {streak} identical answers in a row")
        else:
            found = streak_test(
                answers,
                answer_shares=answer_shares,
                consensus_shares=consensus_shares,
                reliability_min=reliability_min,
                min_length=streak_min,
            )
            if found is not None and found.p_value < streak_p:
                flags.append(
                    f"streak: {found.length} identical answers in a row (p = {found.p_value:.1g} for an honest "
                    f"worker): “{found.value}”"
                )
    if pasted:
        flags.append(f"pasted: {pasted} description{'s' if pasted != 1 else ''} pasted")
    return flags


def answer_shares(answers: Iterable[Any]) -> dict[Any, float]:
    """Each distinct answer's share of ``answers``."""
    counts = Counter(answers)
    total = sum(counts.values())
    return {value: count / total for value, count in counts.items()}


def consensus_shares(answers_by_hit: Iterable[Sequence[Any]]) -> dict[Any, float]:
    """Each distinct consensus answer's share of the HITs (a HIT's consensus: its most common answer; HITs tied
    for it are left out): how a worker who answers every HIT as the crowd agrees would answer."""
    consensus = []
    for answers in answers_by_hit:
        top = Counter(answers).most_common(2)
        if top and (len(top) == 1 or top[0][1] > top[1][1]):
            consensus.append(top[0][0])
    return answer_shares(consensus)


# -- researchers ---------------------------------------------------------------------------------------------------


def crowd_study_rows() -> list[dict[str, Any]]:
    """Every crowd study with its numbers of task HITs, workers and answers."""
    studies = CrowdStudy.objects.annotate(
        task_hits=Count("hits", filter=Q(hits__role=HitRole.TASK), distinct=True),
        worker_count=Count("workers", distinct=True),
    ).prefetch_related("extractions__layer__network")
    answered = dict(
        CrowdAssignment.objects.answered()
        .tasks()
        .values("hit__study")
        .annotate(n=Count("id"))
        .values_list("hit__study", "n")
    )
    return [
        {
            "study": study,
            "answers": answered.get(study.pk, 0),
            "layers": ", ".join(sorted(f"{e.layer.network.name}/{e.layer.name}" for e in study.extractions.all())),
        }
        for study in studies
    ]


def crowd_study_progress(study: CrowdStudy) -> dict[str, Any]:
    """HITs per role, places filled on task HITs, assignments per state, workers (real and simulated)."""
    hits = dict(study.hits.values("role").annotate(n=Count("id")).values_list("role", "n"))
    tasks = study.hits.filter(role=HitRole.TASK)
    places = tasks.aggregate(total=Sum("max_assignments"))["total"] or 0
    states = dict(
        CrowdAssignment.objects.filter(hit__study=study)
        .values("state")
        .annotate(n=Count("id"))
        .values_list("state", "n")
    )
    answered = CrowdAssignment.objects.answered().tasks().filter(hit__study=study).count()
    return {
        "hits": {role.label: hits.get(role.value, 0) for role in HitRole},
        "task_hits": hits.get(HitRole.TASK, 0),
        "places": places,
        "answered": answered,
        "percent": int(100 * answered / places) if places else 0,
        "complete_hits": tasks.annotate(n=Count("assignments", filter=Q(assignments__state__in=SUBMITTED_STATES)))
        .filter(Q(n__gte=F("max_assignments")) | Q(retired=True))
        .count(),
        "states": {state.label: states.get(state.value, 0) for state in CrowdAssignmentState},
        "workers": study.workers.filter(simulated=False).count(),
        "simulated_workers": study.workers.filter(simulated=True).count(),
        "blocked": study.workers.filter(blocked=True).count(),
    }


CROWD_PAGE_SIZE = 50
HIT_STATES = {"open": "Still collecting answers", "complete": "All answers in", "retired": "Retired early"}
HIT_AGREEMENT = {
    "none": "No answers yet",
    "unanimous": "Unanimous (2+ answers, all alike)",
    "majority": "Majority, not unanimous",
    "split": "Split (no majority)",
}
"""Agreement levels of a HIT's counted answers (see :func:`agreement_level`), as the HIT list filters them."""


def agreement_level(support: int, answers: int) -> str:
    """A HIT's agreement level from ``answers`` (its counted answers) and ``support`` (how many of them give its
    best-supported answer, :func:`annotation.crowd.aggregation.majority_support`): a key of :data:`HIT_AGREEMENT`,
    or "single" for one answer (neither agreement nor disagreement yet). "Majority" means more than half."""
    if answers == 0:
        return "none"
    if answers == 1:
        return "single"
    if support == answers:
        return "unanimous"
    return "majority" if 2 * support > answers else "split"


def agreement_matches(
    support: int, answers: int, *, level: str = "", low: float | None = None, high: float | None = None
) -> bool:
    """Whether a HIT passes the HIT list's agreement filter: its :func:`agreement_level` is ``level`` (when given)
    and the share of answers giving its best-supported answer lies in [``low``, ``high``] (each when given; a HIT
    without answers has no share). The SQL twin is :func:`_agreement_filter`."""
    if level and agreement_level(support, answers) != level:
        return False
    if low is None and high is None:
        return True
    if not answers:
        return False
    share = support / answers
    return (low is None or share >= low - 1e-9) and (high is None or share <= high + 1e-9)


def hit_answer_keys(hit: Hit, assignments: Iterable[CrowdAssignment]) -> list[Any]:
    """The comparable answers of a HIT's counted ``assignments``: yes/no or the image picked (validation, forced
    choice), the count (purity), the normalised phrase (descriptions, grouped as
    :func:`canonical_description` groups them); blanks left out."""
    if hit.kind == CrowdTaskKind.PURITY:
        return [a.count for a in assignments if a.count is not None]
    if hit.kind == CrowdTaskKind.DESCRIPTION:
        return [description_key(a.description) for a in assignments if a.description and a.description.strip()]
    return [a.answer for a in assignments if a.answer]


def description_key(text: str) -> str:
    """What "the same description" means (as in :func:`canonical_description`): the normalised concept name, or
    the lower-cased phrase where normalising leaves nothing."""
    text = " ".join(text.split())
    return normalise_concept_name(text) or text.lower()


def _counted_answers(queryset):
    """The number of rows of an assignments subquery (0 for none), for one outer HIT or assignment."""
    return Coalesce(Subquery(queryset.values("hit").annotate(n=Count("id")).values("n")[:1]), 0)


def _with_agreement(hits):
    """``hits`` with the aliases ``agreement_answers`` (counted answers) and ``agreement_support`` (how many give the
    best-supported answer: :func:`annotation.crowd.aggregation.majority_support` in SQL, as the largest number of a
    HIT's answers alike to one of them), ``agreement_twice`` (twice the support) and ``agreement_share`` (support over
    answers; NULL without answers). Answers are alike when they give the same ``answer`` (validation, forced choice)
    or counts within :data:`~annotation.crowd.aggregation.PURITY_COUNT_TOLERANCE` (purity; each kind fills
    only its own field). Description phrases are alike only after :func:`annotation.naming.normalise_concept_name`,
    which SQL cannot do: their support here is 0 (see :func:`crowd_hits_for_list`)."""
    counted = CrowdAssignment.objects.filter(state__in=SUBMITTED_STATES).filter(
        ~Q(answer="") | Q(count__isnull=False) | ~Q(description="")
    )
    tolerance = aggregation.PURITY_COUNT_TOLERANCE
    alike = counted.filter(hit=OuterRef("hit")).filter(
        (Q(answer=OuterRef("answer")) & ~Q(answer=""))
        | Q(count__gte=OuterRef("count") - tolerance, count__lte=OuterRef("count") + tolerance)
    )
    support = counted.filter(hit=OuterRef("pk")).annotate(alike=_counted_answers(alike)).order_by("-alike")
    hits = hits.alias(
        agreement_answers=_counted_answers(counted.filter(hit=OuterRef("pk"))),
        agreement_support=Coalesce(Subquery(support.values("alike")[:1]), 0),
    )
    return hits.alias(
        agreement_twice=F("agreement_support") * 2,
        agreement_share=Cast("agreement_support", FloatField())
        / NullIf(Cast("agreement_answers", FloatField()), Value(0.0)),
    )


def _agreement_filter(level: str, low: float | None, high: float | None) -> Q:
    """The SQL twin of :func:`agreement_matches` on the aliases of :func:`_with_agreement`."""
    condition = Q()
    if level == "none":
        condition &= Q(agreement_answers=0)
    elif level == "unanimous":
        condition &= Q(agreement_answers__gte=2, agreement_support=F("agreement_answers"))
    elif level == "majority":
        answers = F("agreement_answers")
        condition &= Q(agreement_answers__gte=2, agreement_support__lt=answers, agreement_twice__gt=answers)
    elif level == "split":
        condition &= Q(agreement_answers__gte=2, agreement_twice__lte=F("agreement_answers"))
    if low is not None:
        condition &= Q(agreement_answers__gte=1, agreement_share__gte=low - 1e-9)
    if high is not None:
        condition &= Q(agreement_answers__gte=1, agreement_share__lte=high + 1e-9)
    return condition


def _description_agreement_ids(hits, *, level: str, low: float | None, high: float | None) -> list[int]:
    """The description HITs of ``hits`` with answers that pass the agreement filter, judged in Python
    (:func:`agreement_matches` on :func:`description_key`s): one query over the answers of the description HITs
    the other filters leave."""
    keys: dict[int, list[str]] = {}
    for hit_id, text in (
        CrowdAssignment.objects.filter(
            hit__in=hits.filter(kind=CrowdTaskKind.DESCRIPTION).values("pk"), state__in=SUBMITTED_STATES
        )
        .exclude(description="")
        .values_list("hit_id", "description")
    ):
        if text.strip():
            keys.setdefault(hit_id, []).append(description_key(text))
    return [
        hit_id
        for hit_id, answers in keys.items()
        if agreement_matches(aggregation.majority_support(answers), len(answers), level=level, low=low, high=high)
    ]


def crowd_hits_for_list(
    study: CrowdStudy,
    *,
    role: str = HitRole.TASK,
    layer: str = "",
    unit: int | None = None,
    origin: str = "",
    state: str = "",
    label: str = "",
    agreement: str = "",
    agreement_min: float | None = None,
    agreement_max: float | None = None,
):
    """A study's HITs of ``role`` in list order (layer, unit, origin), filtered by layer name, unit index, label
    origin, ``state`` (a key of :data:`HIT_STATES`), a label substring, and the agreement of the HIT's counted
    answers: ``agreement`` (a key of :data:`HIT_AGREEMENT`) and the share of answers that give the HIT's
    best-supported answer between ``agreement_min`` and ``agreement_max`` (fractions, each optional; see
    :func:`agreement_matches`). Answers are alike when equal (yes/no, the image picked), within ±1 image for purity
    counts (:data:`~annotation.crowd.aggregation.PURITY_COUNT_TOLERANCE`) and after normalising for descriptions.

    All in SQL but the description phrases' agreement, which is judged in Python over the answers of the
    description HITs the other filters leave (:func:`_description_agreement_ids`) and comes back as a list of ids."""
    hits = (
        study.hits.filter(role=role)
        .select_related("unit__layer__network", "label_concept", "grid")
        .order_by("unit__layer__order", "unit__index", "label_origin", "id")
    )
    if layer:
        hits = hits.filter(unit__layer__name=layer)
    if unit is not None:
        hits = hits.filter(unit__index=unit)
    if origin:
        hits = hits.filter(label_origin=origin)
    if label:
        hits = hits.filter(label__icontains=label)
    if state == "retired":
        hits = hits.filter(retired=True)
    elif state in ("open", "complete"):
        answered = Count("assignments", filter=Q(assignments__state__in=SUBMITTED_STATES))
        hits = hits.annotate(n_answered=answered).filter(retired=False)
        hits = (
            hits.filter(n_answered__lt=F("max_assignments"))
            if state == "open"
            else hits.filter(n_answered__gte=F("max_assignments"))
        )
    if agreement or agreement_min is not None or agreement_max is not None:
        condition = _agreement_filter(agreement, agreement_min, agreement_max)
        if agreement == "none" and agreement_min is None and agreement_max is None:
            described = condition  # "no answers yet" needs no phrase compared
        else:
            described = Q(
                pk__in=_description_agreement_ids(hits, level=agreement, low=agreement_min, high=agreement_max)
            )
        hits = _with_agreement(hits).filter(
            (~Q(kind=CrowdTaskKind.DESCRIPTION) & condition) | (Q(kind=CrowdTaskKind.DESCRIPTION) & described)
        )
    return hits


def crowd_hit_rows(hits: Iterable[Hit]) -> list[dict[str, Any]]:
    """HITs (e.g. one page of :func:`crowd_hits_for_list`) with their answers (researchers only: origins are
    shown here)."""
    hits = list(hits)
    answers: dict[int, list[CrowdAssignment]] = {}
    for assignment in (
        CrowdAssignment.objects.filter(hit__in=hits)
        .exclude(state=CrowdAssignmentState.RETURNED)
        .select_related("worker")
        .order_by("submitted_at", "id")
    ):
        answers.setdefault(assignment.hit_id, []).append(assignment)
    rows = []
    for hit in hits:
        given = answers.get(hit.pk, [])
        done = [a for a in given if a.state in SUBMITTED_STATES]
        if hit.kind == CrowdTaskKind.VALIDATION:
            summary = f"{sum(a.answer == 'yes' for a in done)} yes / {sum(a.answer == 'no' for a in done)} no"
        elif hit.kind == CrowdTaskKind.DESCRIPTION:
            chosen = canonical_description([(a.description, a.confidence or 1) for a in done])
            how = " (agreed)" if chosen and chosen.agreed else " (highest confidence)"
            summary = f"“{chosen.text}”{how}" if chosen else ""
        else:
            counts = [a.count for a in done if a.count is not None]
            summary = f"{statistics.median(counts):g} of {hit.purity_shown} (K = {hit.purity_k})" if counts else ""
        keys = hit_answer_keys(hit, done)
        support = aggregation.majority_support(
            keys, tolerance=aggregation.PURITY_COUNT_TOLERANCE if hit.kind == CrowdTaskKind.PURITY else 0
        )
        agreement = {
            "support": support,
            "answers": len(keys),
            "share": support / len(keys) if keys else None,
            "level": agreement_level(support, len(keys)),
        }
        rows.append(
            {"hit": hit, "assignments": given, "answered": len(done), "summary": summary, "agreement": agreement}
        )
    return rows


def crowd_assignment_rows(
    study: CrowdStudy,
    *,
    state: str | None = None,
    worker: CrowdWorker | None = None,
    layer: str = "",
    unit: int | None = None,
    role: str = "",
):
    """Submitted work to review, newest first (a query set: the page pages it), filtered by state, worker, layer
    name, unit index and HIT role."""
    assignments = (
        CrowdAssignment.objects.filter(hit__study=study)
        .exclude(state=CrowdAssignmentState.LEASED)
        .select_related("hit__unit__layer__network", "hit__grid", "worker")
        .order_by("-submitted_at", "-id")
    )
    if state:
        assignments = assignments.filter(state=state)
    if worker is not None:
        assignments = assignments.filter(worker=worker)
    if layer:
        assignments = assignments.filter(hit__unit__layer__name=layer)
    if unit is not None:
        assignments = assignments.filter(hit__unit__index=unit)
    if role:
        assignments = assignments.filter(hit__role=role)
    return assignments


def crowd_worker_rows(study: CrowdStudy) -> list[dict[str, Any]]:
    """Per worker: adapter, answers, gold accuracy, qualification, median time, bonuses and careless signals."""
    assignments = list(
        CrowdAssignment.objects.filter(hit__study=study, state__in=[*SUBMITTED_STATES, CrowdAssignmentState.REJECTED])
        .select_related("hit")
        .order_by("submitted_at", "id")
    )
    task_seconds = [a.seconds for a in assignments if a.seconds is not None and a.hit.role == HitRole.TASK]
    study_median = statistics.median(task_seconds) if task_seconds else None
    by_worker: dict[int, list[CrowdAssignment]] = {}
    for assignment in assignments:
        by_worker.setdefault(assignment.worker_id, []).append(assignment)
    counted = [a for a in assignments if a.hit.role == HitRole.TASK and a.state in SUBMITTED_STATES]
    shares = answer_shares(answer_key(a, a.hit.kind) for a in counted) or None
    by_hit: dict[int, list[Any]] = {}
    for assignment in counted:
        by_hit.setdefault(assignment.hit_id, []).append(answer_key(assignment, assignment.hit.kind))
    consensus = consensus_shares(by_hit.values())
    bonuses = dict(
        CrowdWorker.objects.filter(study=study).annotate(total=Sum("bonuses__amount_cents")).values_list("pk", "total")
    )
    rows = []
    for worker in study.workers.select_related("user").order_by("simulated", "created_at", "id"):
        done = by_worker.get(worker.pk, [])
        tasks = [a for a in done if a.hit.role == HitRole.TASK]
        gold = [a for a in done if a.gold_correct is not None]
        seconds = [a.seconds for a in tasks if a.seconds is not None]
        states = Counter(a.state for a in done)
        rows.append(
            {
                "worker": worker,
                "answered": len(tasks),
                "approved": states.get(CrowdAssignmentState.APPROVED, 0),
                "rejected": states.get(CrowdAssignmentState.REJECTED, 0),
                "submitted": states.get(CrowdAssignmentState.SUBMITTED, 0),
                "gold_right": sum(a.gold_correct for a in gold),
                "gold_total": len(gold),
                "gold_accuracy": sum(a.gold_correct for a in gold) / len(gold) if gold else None,
                "median_seconds": statistics.median(seconds) if seconds else None,
                "pasted": sum(a.pasted for a in tasks),
                "bonus_cents": bonuses.get(worker.pk) or 0,
                "signals": careless_signals(
                    seconds=seconds,
                    study_median=study_median,
                    answers=[answer_key(a, a.hit.kind) for a in tasks],
                    pasted=sum(a.pasted for a in tasks),
                    answer_shares=shares,
                    consensus_shares=consensus,
                ),
            }
        )
    return rows


# -- workers -------------------------------------------------------------------------------------------------------


def worker_by_code(code: str) -> CrowdWorker | None:
    try:
        return CrowdWorker.objects.select_related("study").get(code=code)
    except CrowdWorker.DoesNotExist:
        return None


def worker_progress(worker: CrowdWorker) -> dict[str, int]:
    """The worker's answered HITs (gold included: to them every HIT is alike) and their gold score."""
    done = CrowdAssignment.objects.filter(worker=worker, state__in=[*SUBMITTED_STATES, CrowdAssignmentState.REJECTED])
    return done.aggregate(
        answered=Count("id"),
        gold_right=Count("id", filter=Q(gold_correct=True)),
        gold_total=Count("id", filter=Q(gold_correct__isnull=False)),
    )


def preview_hit(study: CrowdStudy) -> Hit | None:
    """The HIT an MTurk preview shows (read-only): the study's first task HIT."""
    return study.hits.filter(role=HitRole.TASK).select_related("grid").order_by("position").first()


def crowd_open_study_rows(user) -> list[dict[str, Any]]:
    """Open crowd studies for a signed-in crowd worker, with how many HITs they answered in each."""
    rows = []
    for study in CrowdStudy.objects.filter(is_open=True).order_by("-created_at"):
        worker = study.workers.filter(user=user).first()
        rows.append(
            {"study": study, "worker": worker, "answered": worker_progress(worker)["answered"] if worker else 0}
        )
    return rows


# -- answers for aggregation and reports (issue 8 items 5–6) ----------------------------------------------------


def crowd_answer_rows(study: CrowdStudy, *, simulated: str = "include", role: str = HitRole.TASK) -> list[dict]:
    """Every counted answer (submitted or approved; rejected ones are out) of the study's HITs of ``role``, as
    plain values: ``hit`` (id), ``unit`` (id), ``unit_index``, ``layer`` (name), ``origin`` (validation: where the
    label came from), ``label``, ``label_category``, ``unit_category``, ``worker`` (id), ``simulated``, ``answer``
    ("yes"/"no"), ``description``, ``confidence``, ``count``, ``shown`` (purity: images shown), ``seconds``.
    ``simulated``: "include", "exclude" or "only" (the demo's simulated crowd)."""
    answers = (
        CrowdAssignment.objects.answered()
        .filter(hit__study=study, hit__role=role)
        .order_by("hit_id", "submitted_at", "id")
    )
    if simulated == "exclude":
        answers = answers.filter(worker__simulated=False)
    elif simulated == "only":
        answers = answers.filter(worker__simulated=True)
    return [
        {
            "hit": row[0],
            "unit": row[1],
            "unit_index": row[2],
            "layer": row[3],
            "origin": row[4],
            "label": row[5],
            "label_category": row[6],
            "unit_category": row[7],
            "worker": row[8],
            "simulated": row[9],
            "answer": row[10],
            "description": row[11],
            "confidence": row[12],
            "count": row[13],
            "shown": row[14],
            "seconds": row[15],
        }
        for row in answers.values_list(
            "hit_id",
            "hit__unit_id",
            "hit__unit__index",
            "hit__unit__layer__name",
            "hit__label_origin",
            "hit__label",
            "hit__label_category",
            "hit__unit_category",
            "worker_id",
            "worker__simulated",
            "answer",
            "description",
            "confidence",
            "count",
            "hit__purity_shown",
            "seconds",
        )
    ]


# -- dynamic overlap (issue 8 item 5) -------------------------------------------------------------------------


def hit_overlap_decision(hit: Hit) -> aggregation.OverlapDecision:
    """What the study's dynamic-overlap rules (:meth:`annotation.crowd.aggregation.OverlapRules.from_study`) say about
    one task HIT now, from all its counted answers (the simulated crowd's too: they fill real places).

    For the writer: ``hit_overlap_set(hit=hit, max_assignments=decision.target, retired=decision.action.closes)``
    after each submission to a task HIT of a study whose ``overlap_rule`` is dynamic."""
    study = hit.study
    labels = Counter(
        answer_key(a, hit.kind)
        for a in CrowdAssignment.objects.filter(hit=hit, state__in=SUBMITTED_STATES).only(
            "answer", "description", "count"
        )
    )
    labels.pop("", None)
    labels.pop(None, None)
    return aggregation.overlap_decision(hit.pk, labels, hit.max_assignments, aggregation.OverlapRules.from_study(study))


def unit_crowd_answers(unit) -> list[dict[str, Any]]:
    """Every crowd study's counted answers about ``unit`` (task HITs only; rejected answers left out), study by
    study (newest first): validation labels with their origin and yes/no votes, descriptions with confidence,
    purity counts out of the images shown. ``simulated`` counts the simulated crowd's share of each."""
    hits = (
        Hit.objects.filter(unit=unit, role=HitRole.TASK)
        .select_related("study")
        .order_by("-study__created_at", "kind", "label")
    )
    answered = (
        CrowdAssignment.objects.answered()
        .filter(hit__unit=unit, hit__role=HitRole.TASK)
        .select_related("worker")
        .order_by("submitted_at", "id")
    )
    by_hit: dict[int, list[CrowdAssignment]] = {}
    for assignment in answered:
        by_hit.setdefault(assignment.hit_id, []).append(assignment)
    studies: dict[int, dict[str, Any]] = {}
    for hit in hits:
        entry = studies.setdefault(hit.study_id, {"study": hit.study, "labels": [], "descriptions": [], "purity": []})
        answers = by_hit.get(hit.pk, [])
        simulated = sum(1 for a in answers if a.worker.simulated)
        if hit.kind == CrowdTaskKind.VALIDATION:
            yes = sum(1 for a in answers if a.answer == "yes")
            entry["labels"].append(
                {
                    "label": hit.label,
                    "origin": hit.get_label_origin_display(),
                    "yes": yes,
                    "no": len(answers) - yes,
                    "simulated": simulated,
                }
            )
        elif hit.kind == CrowdTaskKind.DESCRIPTION:
            entry["descriptions"] += [
                {"text": a.description, "confidence": a.confidence, "simulated": a.worker.simulated} for a in answers
            ]
        else:
            counts = [a.count for a in answers if a.count is not None]
            entry["purity"].append(
                {
                    "pattern": (hit.source or {}).get("pattern", ""),
                    "source": (hit.source or {}).get("pattern_source", ""),
                    "shown": hit.purity_shown,
                    "mean": statistics.fmean(counts) if counts else None,
                    "answers": len(counts),
                    "simulated": simulated,
                }
            )
    return list(studies.values())
