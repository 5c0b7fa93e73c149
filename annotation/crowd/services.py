"""The crowd worker's flow (issue 8): workers entering, the atomic next-HIT claim, leases, submissions with gold
feedback, automatic blocking and dynamic overlap, the qualification test, reviews and bonuses.

Studies and their HITs are planned in :mod:`annotation.crowd.hits`; gold answers are checked by
:mod:`annotation.crowd.truth`. Submitting an answer reads only selectors and the pure aggregation rules, never the
reports. Every function is keyword-only and typed. Expected user errors raise :class:`CrowdInputError` with a
readable message.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from django.db import IntegrityError, connection, transaction
from django.db.models import BigIntegerField, ExpressionWrapper, F, Value
from django.db.models.functions import Cast, Mod
from django.utils import timezone
from django.utils.crypto import salted_hmac

from .. import claims
from ..common import InputError, new_token
from ..models import (
    DESCRIPTION_MAX_LENGTH,
    REVIEWABLE_STATES,
    CrowdAdapter,
    CrowdAssignment,
    CrowdAssignmentState,
    CrowdBonus,
    CrowdStudy,
    CrowdTaskKind,
    CrowdWorker,
    Hit,
    HitRole,
    OverlapRule,
    QualificationAttempt,
)
from . import forced_choice
from .selectors import hit_overlap_decision
from .truth import gold_check, worker_gold_accuracy

ORDER_MODULUS = 2_147_483_647
"""A prime above any position: ``(position * a + b) mod p`` is a permutation of positions for 1 ≤ a < p."""
CLAIM_RETRIES = 50
CLAIM_BACKOFF_SECONDS = 0.01
LEASE_EXPIRED = "lease expired"
YES, NO = "yes", "no"


class CrowdInputError(InputError):
    """An expected user error: bad study parameters, a bad answer, a HIT that is no longer yours."""


# -- workers -----------------------------------------------------------------------------------------------------


def worker_enter(
    *,
    study: CrowdStudy,
    adapter: str,
    external_id: str | None = None,
    user=None,
    simulated: bool = False,
    params: dict | None = None,
) -> tuple[CrowdWorker, bool]:
    """The study's worker for (adapter, external id), created on first entry; ``(worker, created)``.

    Own links without an external id: a signed-in user is known by their account, others get a new worker.
    """
    if adapter not in CrowdAdapter.values:
        raise CrowdInputError(f"Unknown adapter {adapter!r}.")
    if external_id is None:
        external_id = f"user-{user.pk}" if user is not None else f"anon-{new_token()}"
    external_id = str(external_id).strip()[:128]
    if not external_id:
        raise CrowdInputError("A worker id is missing.")
    existing = CrowdWorker.objects.filter(study=study, adapter=adapter, external_id=external_id).first()
    if existing is not None:
        return existing, False
    rng = np.random.default_rng()
    try:
        with transaction.atomic():
            worker = CrowdWorker.objects.create(
                study=study,
                adapter=adapter,
                external_id=external_id,
                code=new_token() + new_token(),
                user=user,
                simulated=simulated,
                params=params or {},
                order_a=int(rng.integers(1, ORDER_MODULUS)),
                order_b=int(rng.integers(0, ORDER_MODULUS)),
                qualified=None if study.qualification_required else True,
            )
    except IntegrityError:  # entered twice at once: the other request created it
        return CrowdWorker.objects.get(study=study, adapter=adapter, external_id=external_id), False
    return worker, True


def worker_block(*, worker: CrowdWorker, reason: str, blocked: bool = True) -> CrowdWorker:
    """Block (or unblock) a worker: a blocked worker gets no new HITs; held leases are returned."""
    reason = " ".join(reason.split())[:300]
    if blocked and not reason:
        raise CrowdInputError("Say why the worker is blocked.")
    with transaction.atomic():
        CrowdWorker.objects.filter(pk=worker.pk).update(
            blocked=blocked, blocked_reason=reason if blocked else "", blocked_at=timezone.now() if blocked else None
        )
        if blocked:
            for assignment in CrowdAssignment.objects.filter(worker=worker, state=CrowdAssignmentState.LEASED):
                _release(assignment, reason="worker blocked", now=timezone.now())
    worker.refresh_from_db()
    return worker


# -- the next HIT (atomic) -----------------------------------------------------------------------------------------


def _release(assignment: CrowdAssignment, *, reason: str, now: datetime) -> bool:
    """leased → returned, freeing the HIT's place (conditional: exactly one caller wins)."""
    released = CrowdAssignment.objects.filter(pk=assignment.pk, state=CrowdAssignmentState.LEASED).update(
        state=CrowdAssignmentState.RETURNED, returned_at=now, reason=reason
    )
    if released:
        Hit.objects.filter(pk=assignment.hit_id, role=HitRole.TASK).update(assigned_count=F("assigned_count") - 1)
    return bool(released)


def leases_expire(*, study: CrowdStudy, now: datetime | None = None, limit: int = 500) -> int:
    """Release the study's leases that ran out (MTurk's AssignmentDurationInSeconds); returns how many (at most
    ``limit`` at a time, but for PostgreSQL, where one statement releases them all)."""
    now = now or timezone.now()
    if claims.claims_in_sql():
        return claims.leases_expire(study_id=study.pk, now=now, reason=LEASE_EXPIRED)
    expired = list(
        CrowdAssignment.objects.filter(
            hit__study=study, state=CrowdAssignmentState.LEASED, lease_expires_at__lt=now
        ).only("pk", "hit_id")[:limit]
    )
    return sum(_release(assignment, reason=LEASE_EXPIRED, now=now) for assignment in expired)


def _ordered_for(queryset, worker: CrowdWorker):
    """``queryset`` of HITs in the worker's own order: ``(position · a + b) mod p``."""
    big = BigIntegerField()
    order = ExpressionWrapper(
        Mod(
            Cast("position", big) * Value(worker.order_a, output_field=big) + Value(worker.order_b, output_field=big),
            Value(ORDER_MODULUS, output_field=big),
        ),
        output_field=big,
    )
    return queryset.annotate(worker_rank=order).order_by("worker_rank", "id")


def _gold_due(worker: CrowdWorker, number: int, rate: float) -> bool:
    """Whether the worker's ``number``-th HIT is a gold item: a uniform draw from an HMAC (``SECRET_KEY``) of the
    worker's row and ``number``. Nothing the worker sees (their code, URLs, tokens) predicts it; the seed of the
    draw used to be the worker code in their own URL (26 of 26 gold items were predicted)."""
    if rate <= 0:
        return False
    digest = salted_hmac("annotation.crowd.gold-placement", f"{worker.study_id}:{worker.pk}:{number}").digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def _lease_unsaved(worker: CrowdWorker, now: datetime, hit: Hit | None = None, **external: str) -> CrowdAssignment:
    return CrowdAssignment(
        hit=hit,
        worker=worker,
        token=new_token(),
        leased_at=now,
        simulated=worker.simulated,
        lease_expires_at=now + timedelta(seconds=worker.study.lease_seconds),
        **external,
    )


def _lease(hit: Hit, worker: CrowdWorker, now: datetime, **external: str) -> CrowdAssignment:
    lease = _lease_unsaved(worker, now, hit, **external)
    lease.save(force_insert=True)
    return lease


def submission_visit(assignment: CrowdAssignment) -> dict[str, str]:
    """The platform visit an assignment was leased in (empty for own-link workers)."""
    if assignment.worker.adapter == CrowdAdapter.LINK:
        return {}
    return {key: value for key in ("external_assignment_id", "external_session") if (value := getattr(assignment, key))}


def visit_gold_failed(*, worker: CrowdWorker, visit: dict[str, str]) -> bool:
    """Whether a platform visit's own gold answers fell below the study's bar (after ``block_min_gold`` of them):
    such a visit gets no more HITs. The worker is not blocked: answers under a platform id may be anyone's (a
    researcher who sees a pattern over a worker's visits blocks the worker by hand)."""
    study = worker.study
    right, answered = worker_gold_accuracy(worker, visit=visit)
    return answered >= study.block_min_gold and right / answered < study.block_below


def worker_needs_qualification(worker: CrowdWorker) -> bool:
    return worker.study.qualification_required and worker.qualified is not True


def hit_next_for_worker(
    *, worker: CrowdWorker, now: datetime | None = None, external: dict[str, str] | None = None
) -> CrowdAssignment | None:
    """The assignment ``worker`` should do now: the one they hold (lease still running), or a newly leased one.

    Atomic, as the expert claim (:func:`annotation.expert.services.task_next_for_rater`): the worker row is locked,
    so one worker's requests are serialised. On PostgreSQL the first candidate HIT in the worker's order is read ``FOR
    UPDATE SKIP LOCKED`` (one row only; when every open HIT is locked by other claims the worker backs off and
    retries holding no HIT lock, so workers with different orders cannot deadlock). On SQLite the transaction
    begins IMMEDIATE (settings), so claims are serialised by the write lock. The claim itself is a conditional
    UPDATE ``assigned_count < max_assignments``, and ``(hit, worker)`` is unique: no HIT gets more than N live
    workers, and nobody gets a HIT twice (even one they returned). Expired leases of the study are released
    first. Gold items come at the study's ``gold_rate``; HITs come in the worker's own order. With ``external``
    (an MTurk assignment, a Prolific session) only a lease of that visit counts as held. None when blocked,
    unqualified, the study is closed, or nothing is left. On PostgreSQL (no gold item due) the held lease or a new
    one is one SQL statement (:mod:`annotation.claims`), the twin of the ORM code below. The worker is noted as
    seen at every call.
    """
    now = now or timezone.now()
    external = external or {}
    in_sql = claims.claims_in_sql()
    with transaction.atomic():
        if in_sql:
            worker.blocked, worker.qualified = claims.worker_lock(worker, now)
        else:
            worker = CrowdWorker.objects.select_for_update(of=("self",)).select_related("study").get(pk=worker.pk)
            CrowdWorker.objects.filter(pk=worker.pk).update(last_seen_at=now)
        study = worker.study
        if worker.blocked or worker_needs_qualification(worker):
            return None
        leases_expire(study=study, now=now)
        gold_due = study.gold_rate > 0 and _gold_due(
            worker, CrowdAssignment.objects.filter(worker=worker).count() + 1, study.gold_rate
        )
        if in_sql and not gold_due:
            for _ in range(CLAIM_RETRIES):
                assignment = claims.worker_next(
                    _lease_unsaved(worker, now, **external),
                    study_id=study.pk,
                    may_lease=study.is_open,
                    order_a=worker.order_a,
                    order_b=worker.order_b,
                    modulus=ORDER_MODULUS,
                    now=now,
                    external=external,
                )
                if assignment is not None or not study.is_open or not _open_hits(study, worker).exists():
                    return assignment
                time.sleep(CLAIM_BACKOFF_SECONDS)  # every open HIT is locked by other claims: wait, holding none
            return None
        held = CrowdAssignment.objects.filter(
            worker=worker, state=CrowdAssignmentState.LEASED, lease_expires_at__gte=now
        )
        # A platform's assignment or session is its own visit: what the worker holds elsewhere stays there.
        for key in ("external_assignment_id", "external_session"):
            if external.get(key):
                held = held.filter(**{key: external[key]})
        held = held.select_related("hit").order_by("leased_at", "id").first()
        if held is not None:
            return held
        if not study.is_open:
            return None
        if gold_due:
            gold = _ordered_for(
                Hit.objects.filter(study=study, role=HitRole.GOLD, kind=study.kind).exclude(assignments__worker=worker),
                worker,
            ).first()
            if gold is not None:
                return _lease(gold, worker, now, **external)
        open_hits = _open_hits(study, worker)
        skip_locked = connection.features.has_select_for_update_skip_locked
        for _ in range(CLAIM_RETRIES):
            candidates = _ordered_for(open_hits, worker)
            if skip_locked:
                candidates = candidates.select_for_update(skip_locked=True, of=("self",))
            hit = candidates.first()
            if hit is not None:
                claimed = Hit.objects.filter(pk=hit.pk, assigned_count__lt=F("max_assignments")).update(
                    assigned_count=F("assigned_count") + 1
                )
                if claimed:
                    return _lease(hit, worker, now, **external)
                continue
            # Nothing unlocked. Without SKIP LOCKED (SQLite: claims are serialised) that means nothing is left;
            # on PostgreSQL other claims may hold the last open HITs: wait for them without holding any lock.
            if not skip_locked or not open_hits.exists():
                break
            time.sleep(CLAIM_BACKOFF_SECONDS)
    return None


def _open_hits(study: CrowdStudy, worker: CrowdWorker):
    """The study's task HITs with a free place that ``worker`` never had (not retired)."""
    return Hit.objects.filter(
        study=study, role=HitRole.TASK, retired=False, assigned_count__lt=F("max_assignments")
    ).exclude(assignments__worker=worker)


def assignment_return(*, assignment: CrowdAssignment, reason: str = "returned by the worker") -> bool:
    """The worker gives a leased HIT back (MTurk's "Return"): its place reopens; they will not get it again."""
    return _release(assignment, reason=reason, now=timezone.now())


def assignment_mark_shown(*, assignment: CrowdAssignment, now: datetime | None = None) -> None:
    """Record when the HIT was first shown (time on task runs from here)."""
    CrowdAssignment.objects.filter(pk=assignment.pk, shown_at__isnull=True).update(shown_at=now or timezone.now())


def hit_overlap_set(*, hit: Hit, max_assignments: int | None = None, retired: bool | None = None) -> Hit:
    """Dynamic overlap (issue 8 item 5): give a HIT more (or fewer) places, or retire it (settled early).

    ``max_assignments`` never drops below the places already taken (the capacity constraint)."""
    updates: dict[str, Any] = {}
    if max_assignments is not None:
        updates["max_assignments"] = max(int(max_assignments), 1)
    if retired is not None:
        updates["retired"] = bool(retired)
    if updates:
        with transaction.atomic():
            current = Hit.objects.select_for_update().get(pk=hit.pk)
            if "max_assignments" in updates:
                updates["max_assignments"] = max(updates["max_assignments"], current.assigned_count)
            Hit.objects.filter(pk=hit.pk).update(**updates)
    hit.refresh_from_db()
    return hit


# -- submissions ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubmitResult:
    """What a submission did: the assignment, and for gold items the feedback to show at once."""

    assignment: CrowdAssignment
    gold: bool = False
    correct: bool | None = None
    explanation: str = ""
    blocked: bool = False


def clean_description(text: str | None) -> str:
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in (text or "")).split())
    if not text:
        raise CrowdInputError("Describe the highlighted patches in a few words.")
    if len(text) > DESCRIPTION_MAX_LENGTH:
        raise CrowdInputError(f"A description has at most {DESCRIPTION_MAX_LENGTH} characters.")
    return text


def answer_fields(
    *,
    hit: Hit,
    answer: str | None = None,
    description: str | None = None,
    confidence: int | str | None = None,
    count: int | str | None = None,
    client_ms: int | str | None = None,
) -> dict[str, Any]:
    """The validated answer fields for ``hit``'s kind (raises :class:`CrowdInputError`)."""
    if hit.kind == CrowdTaskKind.FORCED_CHOICE:
        fields = forced_choice.clean_answer(answer=answer, confidence=confidence, client_ms=client_ms)
        if isinstance(fields, str):
            raise CrowdInputError(fields)
        return fields
    if hit.kind == CrowdTaskKind.VALIDATION:
        if answer not in (YES, NO):
            raise CrowdInputError("Answer yes or no.")
        return {"answer": answer}
    if hit.kind == CrowdTaskKind.DESCRIPTION:
        try:
            confidence = int(confidence)
        except (TypeError, ValueError):
            raise CrowdInputError("Say how sure you are, from 1 to 5.") from None
        if not 1 <= confidence <= 5:
            raise CrowdInputError("Say how sure you are, from 1 to 5.")
        return {"description": clean_description(description), "confidence": confidence}
    try:
        count = int(count)
    except (TypeError, ValueError):
        raise CrowdInputError("Give the number of images.") from None
    if not 0 <= count <= (hit.purity_shown or 0):
        raise CrowdInputError(f"The number lies between 0 and {hit.purity_shown}.")
    return {"count": count}


def assignment_submit(
    *,
    assignment: CrowdAssignment,
    answer: str | None = None,
    description: str | None = None,
    confidence: int | str | None = None,
    count: int | str | None = None,
    pasted: bool = False,
    now: datetime | None = None,
    shown_at: datetime | None = None,
    client_ms: int | str | None = None,
) -> SubmitResult:
    """Record the answer of a leased assignment (leased → submitted, conditional: a double submit is a no-op).

    A lease that ran out is still accepted while nobody else took the place; once released it is refused.
    Gold items are checked at once (feedback returned) and the worker is blocked automatically when their gold
    accuracy falls below the study's ``block_below`` after at least ``block_min_gold`` gold items. Forced-choice
    answers also record the condition the worker saw (:func:`annotation.crowd.forced_choice.condition_for`) and the
    page's own response time ``client_ms``; catch trials are their gold items.
    """
    hit = assignment.hit
    fields = answer_fields(
        hit=hit, answer=answer, description=description, confidence=confidence, count=count, client_ms=client_ms
    )
    now = now or timezone.now()
    with transaction.atomic():
        # Lock order as in the claim (worker, then assignment): a worker's submits and claims never deadlock.
        worker = CrowdWorker.objects.select_for_update().select_related("study").get(pk=assignment.worker_id)
        current = CrowdAssignment.objects.select_for_update().get(pk=assignment.pk)
        current.hit, current.worker = hit, worker
        if current.state != CrowdAssignmentState.LEASED:
            if current.state in REVIEWABLE_STATES:
                return SubmitResult(
                    current,
                    gold=hit.role == HitRole.GOLD,
                    correct=current.gold_correct,
                    explanation=hit.gold_explanation,
                )
            raise CrowdInputError("This HIT is no longer yours (its time ran out or it was returned).")
        shown = shown_at or current.shown_at or current.leased_at
        if hit.kind == CrowdTaskKind.FORCED_CHOICE:
            fields["condition"] = forced_choice.condition_for(worker=worker, hit=hit, trial=hit.fc_trial)
        correct = gold_check(hit, fields) if hit.role == HitRole.GOLD else None
        submitted = dict(
            state=CrowdAssignmentState.SUBMITTED,
            submitted_at=now,
            shown_at=shown,
            seconds=round(max((now - shown).total_seconds(), 0.0), 3),
            pasted=bool(pasted),
            gold_correct=correct,
            **fields,
        )
        CrowdAssignment.objects.filter(pk=current.pk).update(**submitted)
        for field, value in submitted.items():
            setattr(current, field, value)
        blocked = False
        study = worker.study
        if correct is not None and not worker.blocked:
            visit = submission_visit(current)
            if visit:  # a platform visit: only this visit stops (its answers may not be the real worker's)
                blocked = visit_gold_failed(worker=worker, visit=visit)
            else:
                right, answered = worker_gold_accuracy(worker)
                if answered >= study.block_min_gold and right / answered < study.block_below:
                    worker_block(
                        worker=worker, reason=f"gold accuracy {right}/{answered} below {study.block_below:.0%}"
                    )
                    blocked = True
    if hit.role == HitRole.TASK and study.overlap_rule == OverlapRule.DYNAMIC:
        hit_overlap_apply(hit=hit)
    return SubmitResult(
        current, gold=hit.role == HitRole.GOLD, correct=correct, explanation=hit.gold_explanation, blocked=blocked
    )


def hit_overlap_apply(*, hit: Hit) -> Hit:
    """Dynamic overlap after a submission: the study's rules (:func:`annotation.crowd.selectors.hit_overlap_decision`)
    set the HIT's target number of workers (more where agreement is low) and retire it once settled."""
    decision = hit_overlap_decision(hit)
    return hit_overlap_set(hit=hit, max_assignments=decision.target, retired=decision.action.closes)


# -- qualification ------------------------------------------------------------------------------------------------


def qualification_start(*, worker: CrowdWorker, visit: str = "") -> QualificationAttempt | None:
    """The worker's open qualification attempt, or a new one (None when no attempts are left).

    Questions: ``qualification_size`` of the study's qualification HITs in the worker's own order, preferring
    ones not asked in an earlier attempt. A platform ``visit`` (see :func:`visit_key`) counts its own attempts:
    someone else under the worker's id cannot use theirs up."""
    study = worker.study
    with transaction.atomic():
        CrowdWorker.objects.select_for_update().filter(pk=worker.pk).first()
        attempts = list(
            worker.qualification_attempts.filter(visit=visit) if visit else worker.qualification_attempts.all()
        )
        open_attempt = next((attempt for attempt in attempts if attempt.passed is None), None)
        if open_attempt is not None:
            return open_attempt
        if len(attempts) >= study.qualification_max_attempts or worker.qualified is True:
            return None
        asked = {token for attempt in attempts for token in attempt.questions}
        tokens = list(
            _ordered_for(Hit.objects.filter(study=study, role=HitRole.QUALIFICATION), worker).values_list(
                "token", flat=True
            )
        )
        tokens = [t for t in tokens if t not in asked] + [t for t in tokens if t in asked]
        questions = tokens[: study.qualification_size]
        if not questions:
            return None
        return QualificationAttempt.objects.create(
            worker=worker, visit=visit, questions=questions, total=len(questions)
        )


def qualification_fields(hit: Hit, value: str | None) -> dict[str, Any] | None:
    """One qualification answer as the fields :func:`annotation.crowd.truth.gold_check` reads: yes or no for a
    label question, the phrase for a description question (raises :class:`CrowdInputError` when too long), a
    whole number from 0 to the images shown for a purity count question; None when missing or malformed."""
    value = (value or "").strip()
    if hit.kind == CrowdTaskKind.DESCRIPTION:
        return {"description": clean_description(value)} if value else None
    if hit.kind == CrowdTaskKind.PURITY:
        if not value.isascii() or not value.isdigit() or int(value) > (hit.purity_shown or 0):
            return None
        return {"count": int(value)}
    return {"answer": value} if value in (YES, NO) else None


def qualification_given(fields: dict[str, Any]) -> str:
    """How an answer of :func:`qualification_fields` is kept in ``QualificationAttempt.answers`` (and shown)."""
    return str(next(iter(fields.values())))


def qualification_submit(*, attempt: QualificationAttempt, answers: dict[str, str]) -> QualificationAttempt:
    """Score an attempt (every question answered, :func:`qualification_fields`: yes or no for a label question,
    right when it is the known one; a phrase for a description question, right when it names one of the accepted
    names; a count for a purity question, right within the question's tolerance of the known count;
    :func:`annotation.crowd.truth.gold_check`); the worker qualifies at the study's pass rate, and is marked
    unqualified once their attempts are used up — an own-link worker only: a platform visit that used up its
    attempts is refused by :func:`qualification_failed`, the worker id stays open."""
    hits = {hit.token: hit for hit in Hit.objects.filter(study_id=attempt.worker.study_id, token__in=attempt.questions)}
    fields = {token: qualification_fields(hit, answers.get(token)) for token, hit in hits.items()}
    missing = [token for token in attempt.questions if token in fields and fields[token] is None]
    if missing:
        raise CrowdInputError(f"Answer every question ({len(missing)} left).")
    with transaction.atomic():
        CrowdWorker.objects.select_for_update().filter(pk=attempt.worker_id).first()
        attempt = (
            QualificationAttempt.objects.select_for_update(of=("self",))
            .select_related("worker__study")
            .get(pk=attempt.pk)
        )
        if attempt.passed is not None:
            return attempt
        worker, study = attempt.worker, attempt.worker.study
        attempt.answers = {token: qualification_given(fields[token]) for token in attempt.questions if token in hits}
        correct = sum(gold_check(hits[token], fields[token]) for token in attempt.answers)
        attempt.correct, attempt.total = correct, len(attempt.questions)
        attempt.passed = correct >= study.qualification_pass_rate * attempt.total - 1e-9
        attempt.submitted_at = timezone.now()
        attempt.save()
        used = worker.qualification_attempts.filter(visit=attempt.visit).count()
        if attempt.passed:
            CrowdWorker.objects.filter(pk=worker.pk).update(qualified=True)
        elif used >= study.qualification_max_attempts and not attempt.visit:
            CrowdWorker.objects.filter(pk=worker.pk).update(qualified=False)
    return attempt


def visit_key(context: dict[str, str]) -> str:
    """One string naming a platform visit (its MTurk assignment or Prolific session); empty for own links."""
    return "|".join(context[key] for key in ("external_assignment_id", "external_session") if context.get(key))


def qualification_failed(*, worker: CrowdWorker, visit: str = "") -> bool:
    """Whether this worker (own link) or this platform visit failed the qualification test for good."""
    if worker.qualified is True:
        return False
    if not visit:
        return worker.qualified is False
    failed = worker.qualification_attempts.filter(visit=visit, passed=False).count()
    return failed >= worker.study.qualification_max_attempts


def practice_answer(*, attempt: QualificationAttempt, token: str, answer: str) -> bool:
    """Record one practice answer of a forced-choice study (its qualification HITs are practice trials with
    feedback, not a test); returns whether it was right. Once every practice trial is answered the attempt is
    complete and the worker goes on to the real trials whatever their score (the study's pass rate is 0)."""
    if token not in attempt.questions:
        raise CrowdInputError("This practice trial is not yours.")
    if answer not in forced_choice.ANSWERS:
        raise CrowdInputError("Pick image 1 or image 2.")
    with transaction.atomic():
        CrowdWorker.objects.select_for_update().filter(pk=attempt.worker_id).first()
        attempt = QualificationAttempt.objects.select_for_update().get(pk=attempt.pk)
        right = Hit.objects.get(study_id=attempt.worker.study_id, token=token).gold_answer == answer
        if attempt.passed is None and token not in attempt.answers:
            attempt.answers = {**attempt.answers, token: answer}
            attempt.correct += int(right)
            if len(attempt.answers) == len(attempt.questions):
                attempt.passed = True
                attempt.submitted_at = timezone.now()
                CrowdWorker.objects.filter(pk=attempt.worker_id).update(qualified=True)
            attempt.save()
    return right


# -- review, bonuses --------------------------------------------------------------------------------------------


def assignment_review(
    *, assignment: CrowdAssignment, approve: bool, reason: str = "", reviewer=None
) -> CrowdAssignment:
    """Approve or reject (with a reason) a submitted assignment. A rejected answer leaves the aggregates and frees
    its place on the HIT, so another worker can take it. Reviewing again may change the decision."""
    reason = " ".join((reason or "").split())[:300]
    if not approve and not reason:
        raise CrowdInputError("Say why the work is rejected (the worker sees the reason).")
    with transaction.atomic():
        current = CrowdAssignment.objects.select_for_update().get(pk=assignment.pk)
        if current.state not in REVIEWABLE_STATES:
            raise CrowdInputError("Only submitted work can be approved or rejected.")
        new_state = CrowdAssignmentState.APPROVED if approve else CrowdAssignmentState.REJECTED
        if current.state != new_state:
            if new_state == CrowdAssignmentState.REJECTED:
                Hit.objects.filter(pk=current.hit_id, role=HitRole.TASK).update(assigned_count=F("assigned_count") - 1)
            elif current.state == CrowdAssignmentState.REJECTED:
                Hit.objects.filter(pk=current.hit_id, role=HitRole.TASK).update(
                    assigned_count=F("assigned_count") + 1, max_assignments=_greatest_places(current.hit_id)
                )
        CrowdAssignment.objects.filter(pk=current.pk).update(
            state=new_state, reason=reason, reviewed_by=reviewer, reviewed_at=timezone.now()
        )
    current.refresh_from_db()
    return current


def _greatest_places(hit_id: int) -> int:
    """Un-rejecting restores a place: widen the HIT if another worker took the freed one meanwhile."""
    hit = Hit.objects.get(pk=hit_id)
    return max(hit.max_assignments, hit.assigned_count + 1)


def assignments_review(
    *, assignments: Iterable[CrowdAssignment], approve: bool, reason: str = "", reviewer=None
) -> int:
    done = 0
    for assignment in assignments:
        assignment_review(assignment=assignment, approve=approve, reason=reason, reviewer=reviewer)
        done += 1
    return done


def bonus_grant(
    *, worker: CrowdWorker, amount_cents: int, reason: str, assignment: CrowdAssignment | None = None, created_by=None
) -> CrowdBonus:
    """Record a bonus (the payment itself happens on the worker's platform)."""
    reason = " ".join((reason or "").split())[:300]
    if amount_cents <= 0:
        raise CrowdInputError("A bonus is a positive amount.")
    if not reason:
        raise CrowdInputError("Say what the bonus is for.")
    if assignment is not None and assignment.worker_id != worker.pk:
        raise CrowdInputError("That assignment is another worker's.")
    return CrowdBonus.objects.create(
        worker=worker, assignment=assignment, amount_cents=int(amount_cents), reason=reason, created_by=created_by
    )
